CREATE TABLE quota (
    tenant TEXT PRIMARY KEY,
    projects_max BIGINT NOT NULL,
    projects_used BIGINT NOT NULL DEFAULT 0 CHECK (projects_used >= 0)
);

CREATE TABLE project (
    id UUID PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES quota (tenant),
    name TEXT NOT NULL,
    UNIQUE (tenant, name)
);
