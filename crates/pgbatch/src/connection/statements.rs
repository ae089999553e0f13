//! The connection's statement cache: a batch's statements and diesel-async queries prepared
//! on the server under names of pgbatch's own, so that a statement seen before is sent as
//! `Bind`/`Execute` only, without the server parsing and planning it again.
//!
//! An entry enters the cache when its `Parse` is written (pending) and is used only once
//! the server's `ParseComplete` for it has been read (ready): a unit pipelined behind
//! another cannot know whether the server will skip the `Parse` ahead of it (an earlier
//! step of that unit may fail), so it parses the statement unnamed instead. A `Parse` the
//! server skipped or refused prepared nothing; its entry goes without a `Close` (the name
//! may be a statement the caller prepared, `42P05`). A unit whose answers were read without
//! their collector (a dropped future) takes its pending entries with it, and closes them,
//! since whether their `Parse` ran is not known: closing a name the server does not have is
//! not an error. Evicted and forgotten entries are closed at the start of the next unit.
//! Names are never reused on a connection.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::SqlState;
use crate::protocol::{Answers, Ending, Position, Prepared};

/// How a step sends its statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `Parse` into the unnamed statement, as without a cache.
    Unnamed,
    /// `Bind` a statement the server holds under this name: no `Parse`.
    Cached(Arc<str>),
    /// `Parse` under this name, then `Bind` it: a miss, cached once the server confirms it.
    Prepare(Arc<str>),
}

/// One cached statement of some SQL text.
#[derive(Debug)]
struct Entry {
    /// The parameter types it was prepared with.
    oids: Box<[u32]>,
    name: Arc<str>,
    /// Whether the server confirmed its `Parse`.
    ready: bool,
    /// When it was last used, for eviction.
    used: u64,
}

/// The prefix of every name; a user's `PREPARE` reaches it only through a quoted
/// identifier, and the session reset deallocates every statement prepared with SQL.
const PREFIX: &str = "pgbatch:";

/// A bounded, least-recently-used cache of named statements.
#[derive(Debug, Default)]
pub(crate) struct Statements {
    /// 0: off, every statement unnamed.
    capacity: usize,
    by_sql: HashMap<Box<str>, Vec<Entry>>,
    len: usize,
    clock: u64,
    /// The clock when the unit being written began: an entry used since is not evicted,
    /// since the unit binds it after the `Close`s written at its start.
    unit_start: u64,
    next_name: u64,
    /// Names to close at the start of the next unit.
    closing: Vec<Arc<str>>,
}

impl Statements {
    /// A cache of up to `capacity` statements; 0 turns it off.
    pub(crate) fn new(capacity: usize) -> Self {
        Statements { capacity, ..Statements::default() }
    }

    /// Whether statements are cached at all.
    pub(crate) fn is_on(&self) -> bool {
        self.capacity > 0
    }

    /// Starts a unit: what it uses from now on stays until the next unit.
    pub(crate) fn begin_unit(&mut self) {
        self.clock += 1;
        self.unit_start = self.clock;
    }

    /// How many statements are cached, ready or pending.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How a step should send `statement` with parameters of types `oids`: unnamed when it
    /// may not be kept (a diesel-async query Diesel says is not worth keeping), otherwise as
    /// [`target`](Self::target) says.
    pub(crate) fn target_for(&mut self, statement: &crate::codec::Statement, oids: &[u32]) -> Target {
        if statement.sql.cacheable { self.target(&statement.sql.text, oids) } else { Target::Unnamed }
    }

    /// How a step should send `sql` with parameters of types `oids`; a miss becomes a
    /// pending entry (evicting the least recently used ready one when full).
    pub(crate) fn target(&mut self, sql: &str, oids: &[u32]) -> Target {
        if self.capacity == 0 {
            return Target::Unnamed;
        }
        self.clock += 1;
        if let Some(entry) = self.by_sql.get_mut(sql).and_then(|entries| entries.iter_mut().find(|e| *e.oids == *oids))
        {
            if !entry.ready {
                // Its Parse is still on its way and may yet be skipped.
                return Target::Unnamed;
            }
            entry.used = self.clock;
            return Target::Cached(Arc::clone(&entry.name));
        }
        if self.len >= self.capacity && !self.evict() {
            return Target::Unnamed;
        }
        // Of one width: a unit's bytes do not depend on the order its statements were first
        // seen in.
        let name: Arc<str> = format!("{PREFIX}{:08}", self.next_name).into();
        self.next_name += 1;
        let entry = Entry { oids: oids.into(), name: Arc::clone(&name), ready: false, used: self.clock };
        self.by_sql.entry(sql.into()).or_default().push(entry);
        self.len += 1;
        Target::Prepare(name)
    }

    /// Evicts the least recently used ready entry the current unit does not use; false when
    /// there is none (every entry pending, or used by the unit).
    fn evict(&mut self) -> bool {
        let unit_start = self.unit_start;
        let oldest = self
            .by_sql
            .iter()
            .flat_map(|(sql, entries)| {
                entries.iter().filter(|e| e.ready && e.used < unit_start).map(move |e| (e.used, sql))
            })
            .min_by_key(|(used, _)| *used)
            .map(|(used, sql)| (used, sql.clone()));
        let Some((used, sql)) = oldest else { return false };
        self.remove(&sql, |entry| entry.ready && entry.used == used, true);
        true
    }

    /// Removes the entries of `sql` that `which` picks, and closes them when `close` says
    /// the server may have them.
    fn remove(&mut self, sql: &str, which: impl Fn(&Entry) -> bool, close: bool) {
        let Some(entries) = self.by_sql.get_mut(sql) else { return };
        let before = entries.len();
        let closing = &mut self.closing;
        entries.retain(|entry| {
            let remove = which(entry);
            if remove && close {
                closing.push(Arc::clone(&entry.name));
            }
            !remove
        });
        self.len -= before - entries.len();
        if entries.is_empty() {
            self.by_sql.remove(sql);
        }
    }

    /// Takes in a landed unit's named `Parse`s, of which the first `parsed` `Parse`
    /// messages were confirmed: those entries become ready, the others are dropped without
    /// a `Close`. The server did not prepare them, and the name may be a statement the
    /// caller prepared (a `Parse` that failed with `42P05`), which a `Close` would remove.
    pub(crate) fn settle(&mut self, prepared: &[Prepared], parsed: usize) {
        for Prepared { ordinal, name } in prepared {
            let confirmed = *ordinal < parsed;
            let found = self.by_sql.iter_mut().find_map(|(sql, entries)| {
                entries.iter_mut().find(|e| e.name == *name).map(|entry| (sql.clone(), entry))
            });
            let Some((sql, entry)) = found else { continue };
            if confirmed {
                entry.ready = true;
            } else {
                self.remove(&sql, |e| e.name == *name, false);
            }
        }
    }

    /// Drops the entries `targets` would have prepared, in a unit that was not written after
    /// all (a bind could not be encoded): the server never saw their `Parse`.
    pub(crate) fn unwritten(&mut self, targets: &[Target]) {
        self.settle(&prepared_in(targets, 0).0, 0);
    }

    /// Forgets every entry, closing each at the start of the next unit: after the server
    /// lost a statement (a `DEALLOCATE` of the caller's), or changed a plan's result type.
    pub(crate) fn forget(&mut self) {
        for entries in std::mem::take(&mut self.by_sql).into_values() {
            self.closing.extend(entries.into_iter().map(|entry| entry.name));
        }
        self.len = 0;
    }

    /// Forgets every entry without closing any: the server dropped them all (`DISCARD ALL`).
    pub(crate) fn discarded(&mut self) {
        self.by_sql.clear();
        self.closing.clear();
        self.len = 0;
    }

    /// Forgets the pending entries: their units' answers were read without looking (a
    /// dropped future), so whether their `Parse` ran is not known.
    pub(crate) fn forget_pending(&mut self) {
        let pending: Vec<Box<str>> = self
            .by_sql
            .iter()
            .filter(|(_, entries)| entries.iter().any(|e| !e.ready))
            .map(|(sql, _)| sql.clone())
            .collect();
        for sql in pending {
            self.remove(&sql, |entry| !entry.ready, true);
        }
    }

    /// The names to close before the next unit, taken.
    pub(crate) fn take_closing(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.closing)
    }

    /// Gives back names that could not be written (the unit was not queued).
    pub(crate) fn restore_closing(&mut self, names: Vec<Arc<str>>) {
        self.closing.extend(names);
    }
}

/// A statement sent by a name of the statement cache's that the server could not run as
/// prepared: its plan's result type changed (`0A000`, "cached plan must not change result
/// type": a table it reads was altered), the server no longer has it (`26000`: the caller
/// deallocated it), or a statement the caller prepared took its name (`42P05`). Each fails
/// the statement's `Parse` or `Bind`; the same codes raised while it runs (a function that
/// raises `feature_not_supported`, a `DO` block whose `PREPARE` meets a taken name) are the
/// statement's own failure.
pub(crate) struct CacheMiss;

impl CacheMiss {
    /// Whether `answers` failed at a statement sent by a cached name (`cached`, per
    /// statement), before it ran, for one of [`CacheMiss`]'s reasons.
    pub(crate) fn in_answers(answers: &Answers, cached: &[bool]) -> bool {
        let Ending::Failed { at: Position::Statement(index), error } = &answers.ending else { return false };
        answers.failed_before_running
            && cached.get(*index).copied().unwrap_or(false)
            && [SqlState::FEATURE_NOT_SUPPORTED, SqlState::INVALID_SQL_STATEMENT_NAME, SqlState::DUPLICATE_PSTATEMENT]
                .contains(error.code())
    }
}

/// The named `Parse`s among `targets`, written in order, the first `Parse` among them being
/// the unit's `first_ordinal`th; and how many `Parse`s they write.
pub(crate) fn prepared_in(targets: &[Target], first_ordinal: usize) -> (Vec<Prepared>, usize) {
    let mut ordinal = first_ordinal;
    let mut prepared = Vec::new();
    for target in targets {
        match target {
            Target::Cached(_) => {}
            Target::Unnamed => ordinal += 1,
            Target::Prepare(name) => {
                prepared.push(Prepared { ordinal, name: Arc::clone(name) });
                ordinal += 1;
            }
        }
    }
    (prepared, ordinal - first_ordinal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(target: &Target) -> Arc<str> {
        match target {
            Target::Prepare(name) | Target::Cached(name) => Arc::clone(name),
            Target::Unnamed => panic!("unnamed"),
        }
    }

    #[test]
    fn a_statement_is_used_by_name_only_after_its_parse_was_confirmed() {
        let mut cache = Statements::new(4);
        let first = cache.target("SELECT $1", &[23]);
        assert!(matches!(first, Target::Prepare(_)));
        // Pipelined behind the unit that parses it: not known to exist yet.
        assert_eq!(cache.target("SELECT $1", &[23]), Target::Unnamed);
        cache.settle(&[Prepared { ordinal: 0, name: name(&first) }], 1);
        assert_eq!(cache.target("SELECT $1", &[23]), Target::Cached(name(&first)));
        // Other parameter types are another statement.
        assert!(matches!(cache.target("SELECT $1", &[25]), Target::Prepare(_)));
    }

    #[test]
    fn a_parse_the_server_skipped_leaves_no_entry() {
        let mut cache = Statements::new(4);
        let first = cache.target("SELECT 1", &[]);
        cache.settle(&[Prepared { ordinal: 3, name: name(&first) }], 3);
        assert_eq!(cache.len(), 0);
        let again = cache.target("SELECT 1", &[]);
        assert!(matches!(again, Target::Prepare(_)));
        assert_ne!(name(&again), name(&first), "names are never reused");
        assert!(cache.take_closing().is_empty(), "a name the server did not prepare is not closed");
    }

    #[test]
    fn the_least_recently_used_ready_entry_is_evicted_and_closed() {
        let mut cache = Statements::new(2);
        let a = cache.target("a", &[]);
        let b = cache.target("b", &[]);
        cache.settle(&[Prepared { ordinal: 0, name: name(&a) }, Prepared { ordinal: 1, name: name(&b) }], 2);
        cache.begin_unit();
        assert!(matches!(cache.target("a", &[]), Target::Cached(_)));
        let c = cache.target("c", &[]);
        assert!(matches!(c, Target::Prepare(_)));
        assert_eq!(cache.take_closing(), vec![name(&b)]);
        assert_eq!(cache.len(), 2);
        // Full of one ready entry the unit uses and one pending: nothing can go.
        assert_eq!(cache.target("d", &[]), Target::Unnamed);
        // In the next unit the ready one goes.
        cache.begin_unit();
        assert!(matches!(cache.target("d", &[]), Target::Prepare(_)));
        assert_eq!(cache.take_closing(), vec![name(&a)]);
        // Full of pending entries only: unnamed.
        assert_eq!(cache.target("e", &[]), Target::Unnamed);
    }

    #[test]
    fn forgetting_closes_every_name_and_forgetting_pending_keeps_the_ready() {
        let mut cache = Statements::new(8);
        let a = cache.target("a", &[]);
        cache.settle(&[Prepared { ordinal: 0, name: name(&a) }], 1);
        let b = cache.target("b", &[]);
        cache.forget_pending();
        assert_eq!(cache.take_closing(), vec![name(&b)]);
        assert!(matches!(cache.target("a", &[]), Target::Cached(_)));
        cache.forget();
        assert_eq!(cache.take_closing(), vec![name(&a)]);
        assert_eq!(cache.len(), 0);
        let off = &mut Statements::new(0);
        assert_eq!(off.target("a", &[]), Target::Unnamed);
    }
}
