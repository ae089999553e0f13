//! Diesel's view of the scenarios' schema (`schema.sql`).

#![allow(missing_docs)]

diesel::table! {
    silo (id) {
        id -> Uuid,
        name -> Text,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    project (id) {
        id -> Uuid,
        silo_id -> Uuid,
        name -> Text,
        rcgen -> Int8,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    virtual_provisioning_collection (id) {
        id -> Uuid,
        collection_type -> Text,
        cpus_provisioned -> Int8,
        ram_provisioned -> Int8,
        storage_provisioned -> Int8,
    }
}

diesel::joinable!(project -> silo (silo_id));
diesel::allow_tables_to_appear_in_same_query!(silo, project, virtual_provisioning_collection);
