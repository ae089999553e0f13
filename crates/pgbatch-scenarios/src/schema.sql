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
