//! Sync (scenario S1): applying a batch of replicated messages, all or nothing.

use diesel::prelude::*;
use pgbatch::{Cause, Fragment};
use uuid::Uuid;

use crate::schema::{sync_clock, sync_item, sync_message};

/// One replicated change: set `item`'s value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's id, unique in the log.
    pub id: Uuid,
    /// The item it changes.
    pub item: i64,
    /// The item's new value.
    pub value: String,
    /// The sender's clock when it was made.
    pub clock: i64,
}

/// Why a set of messages could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// A message could not be applied; nothing of the set was.
    #[error("message {index} ({id}) could not be applied: {reason}")]
    Message {
        /// Its position in the set, from 0.
        index: usize,
        /// Its id.
        id: Uuid,
        /// What was wrong with it.
        reason: MessageFault,
    },
}

/// What was wrong with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageFault {
    /// Its item does not exist.
    #[error("no such item")]
    UnknownItem,
    /// Its value breaks a rule of the item table.
    #[error("the value is not allowed")]
    BadValue,
    /// It is in the log already.
    #[error("it was applied before")]
    AlreadyApplied,
    /// Another failure, kept in the statement failure.
    #[error("the server refused it")]
    Other,
}

/// The labels of the statements [`apply`] builds.
pub mod labels {
    /// The update of message `index`'s item.
    pub fn update_item(index: usize) -> String {
        format!("message {index}: update item")
    }

    /// The log entry of message `index`.
    pub fn log(index: usize) -> String {
        format!("message {index}: log")
    }

    /// The merged clock, written last.
    pub const WRITE_CLOCK: &str = "write merged clock";
}

/// Applies `messages` in order (per message: the item's new value, then its log entry) and
/// then writes `merged_clock`. A message that fails fails the set with
/// [`SyncError::Message`], naming it; nothing of the set is written.
pub fn apply(messages: &[Message], merged_clock: i64) -> Fragment<SyncError> {
    let mut fragment = Fragment::new();
    for (index, message) in messages.iter().enumerate() {
        fragment
            .push(diesel::update(sync_item::table.find(message.item)).set(sync_item::value.eq(message.value.clone())))
            .label(labels::update_item(index))
            .expect_rows(1);
        fragment
            .push(diesel::insert_into(sync_message::table).values((
                sync_message::id.eq(message.id),
                sync_message::item_id.eq(message.item),
                sync_message::value.eq(message.value.clone()),
                sync_message::clock.eq(message.clock),
            )))
            .label(labels::log(index));
    }
    fragment
        .push(diesel::update(sync_clock::table.find(1)).set(sync_clock::clock.eq(merged_clock)))
        .label(labels::WRITE_CLOCK)
        .expect_rows(1);
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    fragment.map_failure(move |failure| {
        let label = failure.label()?;
        let index = (0..ids.len()).find(|&i| label == labels::update_item(i) || label == labels::log(i))?;
        let reason = match failure.cause() {
            Cause::GuardFailed(_) => MessageFault::UnknownItem,
            Cause::CheckViolation(_) => MessageFault::BadValue,
            Cause::UniqueViolation(_) => MessageFault::AlreadyApplied,
            _ => MessageFault::Other,
        };
        Some(SyncError::Message { index, id: ids[index], reason })
    })
}
