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
diesel::allow_tables_to_appear_in_same_query!(
    project,
    silo,
    silo_quotas,
    virtual_provisioning_collection,
    virtual_provisioning_resource,
    instance,
    disk,
    vpc,
    vpc_firewall_rule,
);

diesel::table! {
    silo_quotas (silo_id) {
        silo_id -> Uuid,
        cpus -> Int8,
        ram -> Int8,
        storage -> Int8,
    }
}

diesel::table! {
    virtual_provisioning_resource (id) {
        id -> Uuid,
        cpus -> Int8,
        ram -> Int8,
        storage -> Int8,
    }
}

diesel::table! {
    instance (id) {
        id -> Uuid,
        project_id -> Uuid,
        name -> Text,
    }
}

diesel::table! {
    disk (id) {
        id -> Uuid,
        project_id -> Uuid,
        attach_instance_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    vpc (id) {
        id -> Uuid,
        project_id -> Uuid,
        firewall_gen -> Int8,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    vpc_firewall_rule (id) {
        id -> Uuid,
        vpc_id -> Uuid,
        name -> Text,
        action -> Text,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! { silo_group (id) { id -> Uuid, silo_id -> Uuid, name -> Text } }
diesel::table! { role_assignment (resource_id, identity_id) { resource_id -> Uuid, identity_id -> Uuid, role -> Text } }
diesel::table! { certificate (id) { id -> Uuid, silo_id -> Uuid, cert -> Text } }
diesel::table! { silo_auth_settings (silo_id) { silo_id -> Uuid, device_token_max_ttl_seconds -> Nullable<Int8> } }
diesel::table! { sync_item (id) { id -> Int8, value -> Text } }
diesel::table! { sync_message (id) { id -> Uuid, item_id -> Int8, value -> Text, clock -> Int8 } }
diesel::table! { sync_clock (id) { id -> Int4, clock -> Int8 } }
