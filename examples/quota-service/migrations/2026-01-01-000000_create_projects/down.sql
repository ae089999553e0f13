DROP TABLE project; DROP TABLE quota;
