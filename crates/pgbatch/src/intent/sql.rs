//! The SQL of the intent table: its DDL and every statement the intents module sends.

use crate::error::BuildError;
use crate::plan::quote_table;

/// The state a pending intent finishes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Its effect happened and the rows it implies were written.
    Done,
    /// Its effect was undone or never happened.
    Cancelled,
}

impl Finish {
    fn state(self) -> &'static str {
        match self {
            Finish::Done => "done",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// The intent table's name and its SQL.
#[derive(Debug, Clone)]
pub(crate) struct IntentSql {
    table: String,
    /// The table's name without its schema, for its constraints and indexes.
    name: String,
}

impl IntentSql {
    pub(crate) fn new(table: &str) -> Result<Self, BuildError> {
        let name = table.rsplit('.').next().unwrap_or(table).to_owned();
        Ok(IntentSql { table: quote_table(table)?, name })
    }

    /// The name of the constraint that keeps a key unique within its kind.
    pub(crate) fn unique_constraint(&self) -> String {
        format!("{}_kind_key", self.name)
    }

    /// The table, its partial indexes on pending and on finished intents.
    pub(crate) fn ddl(&self) -> [String; 3] {
        let (t, name) = (&self.table, &self.name);
        [
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n    \
                 id uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n    \
                 kind text NOT NULL,\n    \
                 key text NOT NULL,\n    \
                 payload jsonb NOT NULL,\n    \
                 state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'cancelled')),\n    \
                 attempts integer NOT NULL DEFAULT 0,\n    \
                 claim uuid,\n    \
                 claimed_until timestamptz,\n    \
                 created_at timestamptz NOT NULL DEFAULT now(),\n    \
                 updated_at timestamptz NOT NULL DEFAULT now(),\n    \
                 CONSTRAINT \"{name}_kind_key\" UNIQUE (kind, key)\n)"
            ),
            format!("CREATE INDEX IF NOT EXISTS \"{name}_pending\" ON {t} (updated_at) WHERE state = 'pending'"),
            format!("CREATE INDEX IF NOT EXISTS \"{name}_finished\" ON {t} (updated_at) WHERE state <> 'pending'"),
        ]
    }

    /// `$1` kind, `$2` key, `$3` payload (JSON text): the new intent's id.
    pub(crate) fn record(&self) -> String {
        format!("INSERT INTO {} (kind, key, payload) VALUES ($1, $2, CAST($3 AS jsonb)) RETURNING id", self.table)
    }

    /// A row when the intent `$1`, `$2` exists.
    pub(crate) fn exists(&self) -> String {
        format!("SELECT id FROM {} WHERE kind = $1 AND key = $2", self.table)
    }

    /// A row when the intent `$1`, `$2` was cancelled.
    pub(crate) fn cancelled(&self) -> String {
        format!("SELECT id FROM {} WHERE kind = $1 AND key = $2 AND state = 'cancelled'", self.table)
    }

    /// Moves the pending intent `$1`, `$2` to `finish`.
    pub(crate) fn finish(&self, finish: Finish) -> String {
        self.finish_where(finish, "kind = $1 AND key = $2")
    }

    /// Moves the pending intent `$1` still claimed by `$2` to `finish`.
    pub(crate) fn finish_claimed(&self, finish: Finish) -> String {
        self.finish_where(finish, "id = $1 AND claim = $2")
    }

    fn finish_where(&self, finish: Finish, which: &str) -> String {
        format!(
            "UPDATE {} SET state = '{}', updated_at = now(), claim = NULL, claimed_until = NULL \
             WHERE {which} AND state = 'pending'",
            self.table,
            finish.state()
        )
    }

    /// Extends the claim `$2` on pending intent `$1` to `$3` seconds from now: one row when
    /// the claim is still this sweep's, none when another sweep took the intent over (or it
    /// was finished).
    pub(crate) fn renew(&self) -> String {
        format!(
            "UPDATE {} SET claimed_until = now() + $3 * INTERVAL '1 second' \
             WHERE id = $1 AND claim = $2 AND state = 'pending'",
            self.table
        )
    }

    /// Lets go of the claim `$2` on intent `$1` (the claim counted the attempt).
    pub(crate) fn release(&self) -> String {
        format!("UPDATE {} SET claim = NULL, claimed_until = NULL WHERE id = $1 AND claim = $2", self.table)
    }

    /// Claims (`$1`, for `$2` seconds) up to `$4` intents pending for more than `$3` seconds
    /// that no live claim holds, skipping those another sweep is claiming right now.
    pub(crate) fn claim(&self) -> String {
        let t = &self.table;
        format!(
            "UPDATE {t} SET claim = $1, claimed_until = now() + $2 * INTERVAL '1 second', attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM {t} WHERE state = 'pending' AND updated_at < now() - $3 * INTERVAL '1 second' \
             AND (claimed_until IS NULL OR claimed_until < now()) ORDER BY updated_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING CAST(id AS uuid) AS id, CAST(kind AS text) AS kind, CAST(key AS text) AS key, \
             CAST(payload AS text) AS payload, CAST(attempts AS integer) AS attempts, \
             EXTRACT(EPOCH FROM created_at)::float8 AS created_at"
        )
    }

    /// Deletes finished intents older than `$1` seconds.
    pub(crate) fn purge(&self) -> String {
        format!("DELETE FROM {} WHERE state <> 'pending' AND updated_at < now() - $1 * INTERVAL '1 second'", self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_statements_use_listed_constructs_only() {
        let sql = IntentSql::new("ops.intents").unwrap();
        let statements = sql.ddl().into_iter().chain([
            sql.record(),
            sql.exists(),
            sql.cancelled(),
            sql.finish(Finish::Done),
            sql.finish_claimed(Finish::Cancelled),
            sql.renew(),
            sql.release(),
            sql.claim(),
            sql.purge(),
        ]);
        for statement in statements {
            crate::codec::constructs::assert_allowed(&statement, &[]);
        }
    }
}
