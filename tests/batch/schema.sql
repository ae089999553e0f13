CREATE TABLE account (
    id bigint PRIMARY KEY,
    email text NOT NULL CONSTRAINT account_email_unique UNIQUE,
    balance bigint NOT NULL DEFAULT 0 CONSTRAINT balance_nonnegative CHECK (balance >= 0)
);
CREATE TABLE note (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL CONSTRAINT note_account_fk REFERENCES account (id),
    body text NOT NULL
);
CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL
        CONSTRAINT audit_account_deferred_fk REFERENCES account (id) DEFERRABLE INITIALLY DEFERRED,
    action text NOT NULL
);
CREATE TYPE mood AS ENUM ('happy', 'sad', 'curious');
CREATE TABLE feeling (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES account (id),
    mood mood NOT NULL
);
INSERT INTO account (id, email, balance) VALUES (1, 'first@example.com', 100);
