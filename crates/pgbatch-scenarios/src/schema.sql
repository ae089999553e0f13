-- The simplified control-plane schema the scenarios run against.
CREATE TABLE silo (
    id uuid PRIMARY KEY,
    name text NOT NULL CONSTRAINT silo_name_unique UNIQUE,
    deleted_at timestamptz
);

CREATE TABLE project (
    id uuid PRIMARY KEY,
    silo_id uuid NOT NULL REFERENCES silo (id),
    name text NOT NULL,
    rcgen bigint NOT NULL DEFAULT 1,
    deleted_at timestamptz
);
CREATE UNIQUE INDEX project_name_unique ON project (silo_id, name) WHERE deleted_at IS NULL;

-- Resource counters of the fleet, of each silo and of each project.
CREATE TABLE virtual_provisioning_collection (
    id uuid PRIMARY KEY,
    collection_type text NOT NULL CHECK (collection_type IN ('fleet', 'silo', 'project')),
    cpus_provisioned bigint NOT NULL DEFAULT 0 CONSTRAINT cpus_nonnegative CHECK (cpus_provisioned >= 0),
    ram_provisioned bigint NOT NULL DEFAULT 0 CONSTRAINT ram_nonnegative CHECK (ram_provisioned >= 0),
    storage_provisioned bigint NOT NULL DEFAULT 0 CONSTRAINT storage_nonnegative CHECK (storage_provisioned >= 0)
);

-- Scenario C3: each silo's quotas, and one row per provisioned instance so that
-- provisioning the same instance twice counts once.
CREATE TABLE silo_quotas (
    silo_id uuid PRIMARY KEY REFERENCES silo (id),
    cpus bigint NOT NULL,
    ram bigint NOT NULL,
    storage bigint NOT NULL
);
CREATE TABLE virtual_provisioning_resource (
    id uuid PRIMARY KEY,
    cpus bigint NOT NULL,
    ram bigint NOT NULL,
    storage bigint NOT NULL
);

-- Scenario C4: instances and the disks attached to them.
CREATE TABLE instance (
    id uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES project (id),
    name text NOT NULL
);
CREATE TABLE disk (
    id uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES project (id),
    attach_instance_id uuid REFERENCES instance (id)
);

-- Scenario C5: VPCs and their firewall rules, soft-deleted.
CREATE TABLE vpc (
    id uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES project (id),
    firewall_gen bigint NOT NULL DEFAULT 1,
    deleted_at timestamptz
);
CREATE TABLE vpc_firewall_rule (
    id uuid PRIMARY KEY,
    vpc_id uuid NOT NULL REFERENCES vpc (id),
    name text NOT NULL,
    action text NOT NULL CHECK (action IN ('allow', 'deny')),
    deleted_at timestamptz
);
CREATE UNIQUE INDEX vpc_firewall_rule_name_unique ON vpc_firewall_rule (vpc_id, name) WHERE deleted_at IS NULL;

-- Scenario C2: what a silo owns besides its counter and quotas.
CREATE TABLE silo_group (id uuid PRIMARY KEY, silo_id uuid NOT NULL REFERENCES silo (id), name text NOT NULL);
CREATE TABLE role_assignment (resource_id uuid NOT NULL, identity_id uuid NOT NULL, role text NOT NULL);
CREATE INDEX role_assignment_resource ON role_assignment (resource_id);
CREATE TABLE certificate (
    id uuid PRIMARY KEY,
    silo_id uuid NOT NULL REFERENCES silo (id),
    cert text NOT NULL CONSTRAINT certificate_is_pem CHECK (cert LIKE '-----BEGIN CERTIFICATE-----%')
);
CREATE TABLE silo_auth_settings (silo_id uuid PRIMARY KEY REFERENCES silo (id), device_token_max_ttl_seconds bigint);

-- Scenario S1: replicated items, the log of the messages applied to them, and the clock.
CREATE TABLE sync_item (
    id bigint PRIMARY KEY,
    value text NOT NULL CONSTRAINT sync_item_value_length CHECK (length(value) <= 200)
);
CREATE TABLE sync_message (
    id uuid PRIMARY KEY,
    item_id bigint NOT NULL REFERENCES sync_item (id),
    value text NOT NULL,
    clock bigint NOT NULL
);
CREATE TABLE sync_clock (id int PRIMARY KEY, clock bigint NOT NULL);
