//! Every Diesel PostgreSQL type read and written through diesel-async's `AsyncPgConnection`
//! and through pgbatch's connection, side by side, at the edges of each type's range: both
//! must return the same value (and the value given), or both must refuse it.
//!
//! Prints `differential types: checks=N same=N both_refused=N mismatches=0`.

use std::fmt::Debug;
use std::io::Write;
use std::str::FromStr;

use bigdecimal::BigDecimal;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use diesel::data_types::PgInterval;
use diesel::sql_types::*;
use diesel::{IntoSql, QueryDsl, QueryResult};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use pgbatch::Connection;

use crate::support::Setup;

/// Both connections and what they said.
struct Sides {
    theirs: AsyncPgConnection,
    ours: Connection,
    checks: usize,
    same: usize,
    both_refused: usize,
    mismatches: Vec<String>,
}

impl Sides {
    /// Judges one value: what each connection returned, against each other and the value.
    fn judge<T: Debug>(
        &mut self,
        what: &str,
        value: &T,
        theirs: QueryResult<T>,
        ours: QueryResult<T>,
        eq: fn(&T, &T) -> bool,
    ) {
        self.checks += 1;
        match (theirs, ours) {
            (Ok(theirs), Ok(ours)) if eq(&theirs, &ours) && eq(&ours, value) => self.same += 1,
            (Err(theirs), Err(_)) => {
                self.both_refused += 1;
                let _ = writeln!(std::io::stderr(), "both refuse {what}: {theirs}");
            }
            (theirs, ours) => {
                self.mismatches.push(format!("{what} {value:?}: AsyncPgConnection {theirs:?}, pgbatch {ours:?}"));
            }
        }
    }
}

/// Selects each value through both connections as `$st`, compared with `$eq` (`==` by
/// default).
macro_rules! check {
    ($sides:expr, $st:ty, [$($value:expr),+ $(,)?]) => {
        check!($sides, $st, [$($value),+], |a, b| a == b)
    };
    ($sides:expr, $st:ty, [$($value:expr),+ $(,)?], $eq:expr) => {{
        $({
            let value = $value;
            let theirs = diesel::select(value.clone().into_sql::<$st>()).get_result(&mut $sides.theirs).await;
            let ours = diesel::select(value.clone().into_sql::<$st>()).get_result(&mut $sides.ours).await;
            $sides.judge(stringify!($st), &value, theirs, ours, $eq);
        })+
    }};
}

fn same_bits_f32(a: &f32, b: &f32) -> bool {
    a.to_bits() == b.to_bits()
}

fn same_bits_f64(a: &f64, b: &f64) -> bool {
    a.to_bits() == b.to_bits()
}

fn decimal(text: &str) -> BigDecimal {
    BigDecimal::from_str(text).unwrap()
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn at(day: NaiveDate, h: u32, min: u32, s: u32, micro: u32) -> NaiveDateTime {
    day.and_time(NaiveTime::from_hms_micro_opt(h, min, s, micro).unwrap())
}

diesel::table! {
    use diesel::sql_types::*;
    every_number (id) {
        id -> Int4,
        small -> Int2,
        big -> Int8,
        real -> Float4,
        double -> Float8,
        exact -> Numeric,
        flag -> Bool,
        maybe -> Nullable<Int4>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    every_other (id) {
        id -> Int4,
        words -> Text,
        bytes -> Bytea,
        local_time -> Timestamp,
        instant -> Timestamptz,
        day -> Date,
        time_of_day -> Time,
        span -> Interval,
        document -> Jsonb,
        plain_json -> Json,
        identifier -> Uuid,
        numbers -> Array<Nullable<Int4>>,
        labels -> Array<Nullable<Text>>,
    }
}

#[derive(diesel::Insertable, diesel::Queryable, Debug, Clone, PartialEq)]
#[diesel(table_name = every_number)]
struct EveryNumber {
    id: i32,
    small: i16,
    big: i64,
    real: f32,
    double: f64,
    exact: BigDecimal,
    flag: bool,
    maybe: Option<i32>,
}

#[derive(diesel::Insertable, diesel::Queryable, Debug, Clone, PartialEq)]
#[diesel(table_name = every_other)]
struct EveryOther {
    id: i32,
    words: String,
    bytes: Vec<u8>,
    local_time: NaiveDateTime,
    instant: DateTime<Utc>,
    day: NaiveDate,
    time_of_day: NaiveTime,
    span: PgInterval,
    document: serde_json::Value,
    plain_json: serde_json::Value,
    identifier: uuid::Uuid,
    numbers: Vec<Option<i32>>,
    labels: Vec<Option<String>>,
}

const TABLES: &str = "CREATE TABLE every_number (id int PRIMARY KEY, small int2 NOT NULL, big int8 NOT NULL, \
    real float4 NOT NULL, double float8 NOT NULL, exact numeric NOT NULL, flag bool NOT NULL, maybe int4); \
    CREATE TABLE every_other (id int PRIMARY KEY, words text NOT NULL, bytes bytea NOT NULL, \
    local_time timestamp NOT NULL, instant timestamptz NOT NULL, day date NOT NULL, time_of_day time NOT NULL, \
    span interval NOT NULL, document jsonb NOT NULL, plain_json json NOT NULL, identifier uuid NOT NULL, \
    numbers int4[] NOT NULL, labels text[] NOT NULL)";

/// Rows at the low end, the high end and the middle of every column's range.
fn numbers(first_id: i32) -> Vec<EveryNumber> {
    vec![
        EveryNumber {
            id: first_id,
            small: i16::MIN,
            big: i64::MIN,
            real: f32::MIN,
            double: f64::MIN_POSITIVE,
            exact: decimal("-99999999999999999999999999999.000000000000000000001"),
            flag: false,
            maybe: None,
        },
        EveryNumber {
            id: first_id + 1,
            small: i16::MAX,
            big: i64::MAX,
            real: f32::MAX,
            double: f64::MAX,
            exact: decimal("12345678901234567890123456789012345678901234567890.98765432109876543210"),
            flag: true,
            maybe: Some(i32::MIN),
        },
        EveryNumber {
            id: first_id + 2,
            small: 0,
            big: -1,
            real: -0.0,
            double: 1.0 / 3.0,
            exact: decimal("0"),
            flag: true,
            maybe: Some(0),
        },
    ]
}

fn others(first_id: i32) -> Vec<EveryOther> {
    vec![
        EveryOther {
            id: first_id,
            words: String::new(),
            bytes: Vec::new(),
            local_time: at(date(-4712, 1, 1), 0, 0, 0, 0),
            instant: at(date(-4712, 1, 1), 0, 0, 0, 0).and_utc(),
            day: date(-4712, 1, 1),
            time_of_day: NaiveTime::from_hms_micro_opt(0, 0, 0, 0).unwrap(),
            span: PgInterval::new(i64::MIN + 1, i32::MIN, i32::MIN),
            document: serde_json::json!({}),
            plain_json: serde_json::json!([]),
            identifier: uuid::Uuid::nil(),
            numbers: Vec::new(),
            labels: vec![None, Some(String::new())],
        },
        EveryOther {
            id: first_id + 1,
            words: "zwölf Boxkämpfer 🥊 \"quoted\" 'single' \\ back".repeat(2000),
            bytes: (0..=255u8).collect(),
            local_time: at(date(262_142, 12, 31), 23, 59, 59, 999_999),
            instant: at(date(262_142, 12, 31), 23, 59, 59, 999_999).and_utc(),
            day: date(262_142, 12, 31),
            time_of_day: NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap(),
            span: PgInterval::new(i64::MAX, i32::MAX, i32::MAX),
            document: serde_json::json!({"nested": {"list": [1, 2.5, -3e20, null, true, "ünï"], "empty": ""}}),
            plain_json: serde_json::json!({"b": 1, "a": [null]}),
            identifier: uuid::Uuid::max(),
            numbers: vec![Some(i32::MIN), None, Some(0), None, Some(i32::MAX)],
            labels: vec![Some("a,b".into()), Some("{braces}".into()), Some("NULL".into()), None],
        },
        EveryOther {
            id: first_id + 2,
            words: "x".into(),
            bytes: vec![0],
            local_time: at(date(2000, 1, 1), 0, 0, 0, 0),
            instant: at(date(1999, 12, 31), 23, 59, 59, 999_999).and_utc(),
            day: date(2000, 2, 29),
            time_of_day: NaiveTime::from_hms_micro_opt(12, 0, 0, 1).unwrap(),
            span: PgInterval::new(-1, -1, 1),
            document: serde_json::json!(null),
            plain_json: serde_json::json!("text"),
            identifier: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            numbers: vec![None],
            labels: vec![],
        },
    ]
}

/// Writes `ours_written` through pgbatch and `theirs_written` through AsyncPgConnection,
/// then reads the table back through both and compares every row with what was written.
macro_rules! write_and_read {
    ($sides:expr, $table:ident, $row:ty, $make:expr) => {{
        let ours_written: Vec<$row> = $make(1);
        diesel::insert_into($table::table).values(&ours_written).execute(&mut $sides.ours).await.unwrap();
        let theirs_written: Vec<$row> = $make(10);
        diesel::insert_into($table::table).values(&theirs_written).execute(&mut $sides.theirs).await.unwrap();
        let read_by_theirs: Vec<$row> = $table::table.order($table::id).load(&mut $sides.theirs).await.unwrap();
        let read_by_ours: Vec<$row> = $table::table.order($table::id).load(&mut $sides.ours).await.unwrap();
        assert_eq!(read_by_ours.len(), 6);
        let written = ours_written.iter().chain(&theirs_written);
        for ((expected, theirs), ours) in written.zip(&read_by_theirs).zip(&read_by_ours) {
            $sides.checks += 1;
            if expected == theirs && theirs == ours {
                $sides.same += 1;
            } else {
                $sides.mismatches.push(format!(
                    "{} row {}: wrote {expected:?}, AsyncPgConnection read {theirs:?}, pgbatch read {ours:?}",
                    stringify!($table),
                    expected.id
                ));
            }
        }
    }};
}

#[tokio::test]
async fn every_type_reads_and_writes_the_same_through_both_connections() {
    let s = Setup::new().await;
    let theirs = AsyncPgConnection::establish(&s.db.url()).await.expect("an AsyncPgConnection");
    let mut sides =
        Sides { theirs, ours: s.connection().await, checks: 0, same: 0, both_refused: 0, mismatches: vec![] };

    check!(sides, Int2, [i16::MIN, -1i16, 0i16, i16::MAX]);
    check!(sides, Int4, [i32::MIN, -1, 0, i32::MAX]);
    check!(sides, Int8, [i64::MIN, -1i64, 0i64, i64::MAX]);
    check!(
        sides,
        Float4,
        [f32::MIN, f32::MIN_POSITIVE, -0.0f32, 0.0f32, f32::MAX, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-45f32],
        same_bits_f32
    );
    check!(
        sides,
        Float8,
        [f64::MIN, f64::MIN_POSITIVE, -0.0f64, f64::MAX, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 5e-324f64],
        same_bits_f64
    );
    check!(
        sides,
        Numeric,
        [
            decimal("0"),
            decimal("-0.0000000000000000000000000001"),
            decimal("123456789012345678901234567890.123456789"),
            decimal("1e100"),
            decimal("-1e-100"),
            decimal("10000"),
            decimal("0.0001"),
        ]
    );
    check!(sides, Bool, [true, false]);
    check!(sides, Text, [String::new(), "ünïcödé ✓ 🦀".to_owned(), "x".repeat(1 << 20), "a\\b'c\"d".to_owned()]);
    check!(sides, Bytea, [Vec::<u8>::new(), (0..=255u8).collect::<Vec<u8>>(), vec![0u8; 1 << 16]]);
    check!(
        sides,
        Timestamp,
        [
            at(date(-4712, 1, 1), 0, 0, 0, 0),
            at(date(1970, 1, 1), 0, 0, 0, 0),
            at(date(2000, 1, 1), 0, 0, 0, 1),
            at(date(262_142, 12, 31), 23, 59, 59, 999_999),
        ]
    );
    check!(
        sides,
        Timestamptz,
        [
            at(date(-4712, 1, 1), 0, 0, 0, 0).and_utc(),
            at(date(2038, 1, 19), 3, 14, 8, 0).and_utc(),
            at(date(262_142, 12, 31), 23, 59, 59, 999_999).and_utc()
        ]
    );
    check!(sides, Date, [date(-4712, 1, 1), date(2000, 2, 29), date(262_142, 12, 31)]);
    check!(
        sides,
        Time,
        [
            NaiveTime::from_hms_micro_opt(0, 0, 0, 0).unwrap(),
            NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap()
        ]
    );
    check!(
        sides,
        Interval,
        [PgInterval::new(0, 0, 0), PgInterval::new(i64::MAX, i32::MAX, i32::MIN), PgInterval::new(-1, -1, -1)]
    );
    check!(
        sides,
        Jsonb,
        [
            serde_json::json!(null),
            serde_json::json!({"a": [1, 2.5, "ü", {"b": null}]}),
            serde_json::json!(12345678901234567890u64)
        ]
    );
    check!(sides, Json, [serde_json::json!({"z": 1, "a": 2}), serde_json::json!([])]);
    check!(sides, Uuid, [uuid::Uuid::nil(), uuid::Uuid::max(), uuid::Uuid::from_u128(42)]);
    check!(
        sides,
        Array<Nullable<Int4>>,
        [Vec::<Option<i32>>::new(), vec![None::<i32>], vec![Some(1), None, Some(i32::MIN)]]
    );
    check!(
        sides,
        Array<Nullable<Text>>,
        [vec![Some(String::new()), None, Some("NULL".to_owned()), Some("{,}".to_owned())]]
    );
    check!(sides, Array<Int8>, [vec![i64::MIN, i64::MAX]]);
    check!(sides, Array<Bool>, [vec![true, false]]);
    check!(sides, Array<Array<Int4>>, [vec![vec![1, 2], vec![3, 4]]]);
    check!(sides, Nullable<Int4>, [None::<i32>, Some(7)]);
    check!(sides, Nullable<Text>, [None::<String>, Some(String::new())]);
    check!(sides, Nullable<Timestamptz>, [None::<DateTime<Utc>>]);
    // Out of PostgreSQL's range: both must refuse (dates after 5874897 AD do not exist;
    // chrono stops before, so an interval of days past int32 is used instead).
    check!(sides, Text, ["nul \0 byte".to_owned()]);

    // Writes through one side, reads through both.
    sides.ours.batch_execute(TABLES).await.unwrap();
    write_and_read!(sides, every_number, EveryNumber, numbers);
    write_and_read!(sides, every_other, EveryOther, others);

    let _ = writeln!(
        std::io::stderr(),
        "differential types: checks={} same={} both_refused={} mismatches={}",
        sides.checks,
        sides.same,
        sides.both_refused,
        sides.mismatches.len()
    );
    assert!(sides.mismatches.is_empty(), "the connections disagree:\n{}", sides.mismatches.join("\n"));
    assert!(sides.same > 80, "most values round-trip: {}", sides.same);
}
