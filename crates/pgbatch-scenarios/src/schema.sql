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
