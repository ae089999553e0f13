//! Fault sweeps: the representative keyed batch cut at every byte of its request and of its
//! answers, dropped after every poll and at a range of delays (one round trip and two-phase,
//! on a bare connection and through a pool), its backend terminated at a range of delays,
//! its network stalled while the caller's timeout drops it, and its server crashed and
//! restarted (see `crash.rs`); and a stream of several callers' keyed batches on one
//! shared connection of a [`Multiplexed`] client cut at a spread of bytes of its requests
//! and of its answers. Every case is judged the same way (see `Sweep::judge`) and the whole
//! sweep prints one line:
//!
//! `fault-sweeps: cases=N partial_states=0 misreports=0 leaked_transactions=0 unsettled=0`
//!
//! At full size (`PGBATCH_TEST_SIZE=full`, what CI runs) the byte cuts take every byte and
//! the multiplexed stream is cut at 90 points a side, and the server crashed every 6 ms into
//! a batch; by default every seventh byte, 30 points and every 18 ms
//! (`PGBATCH_SWEEP_STRIDE`, `PGBATCH_SWEEP_POINTS` and `PGBATCH_SWEEP_CRASH_STEP_MS` set them
//! directly).

use std::time::Duration;

use pgbatch::{Batch, Connection, ConnectionManager, Multiplexed};
use pgbatch_testing::{Fault, Proxy, TestSize};

use crate::support::*;

/// A case's tag: all of a sweep's tags have the same length, so that every run of the
/// representative batch sends the same number of bytes.
fn tag(name: &str, case: u64) -> String {
    format!("{name}-{case:06}")
}

/// A pool of one connection through a fresh proxy, named `name`.
async fn proxied(faults: &Faults, name: &str) -> (Proxy, Pool) {
    let proxy = faults.db.proxy().await.expect("a TCP server").start().await.expect("a proxy");
    let pool = pool_via(faults, &proxy, name).await;
    (proxy, pool)
}

/// A new pool of one connection through `proxy`, named `name`: its connection knows no
/// statement yet, whatever an earlier pool's connection (a replay that survived its case)
/// had cached, so that every case sends the bytes that were measured.
async fn pool_via(faults: &Faults, proxy: &Proxy, name: &str) -> Pool {
    let mut config = faults.db.config_via(proxy);
    config.application_name(name);
    bb8::Pool::builder().max_size(1).build(pgbatch::ConnectionManager::new(config)).await.unwrap()
}

/// Opens the pool's connection before a fault is armed, so that the fault lands on the
/// batch and not on the login.
async fn warm(pool: &Pool) {
    drop(pool.get().await.expect("a connection through the proxy"));
}

/// Whether a cut batch's statements are new to its connection (parsed under the statement
/// cache's names in the same write) or cached there (bound by name, after the session reset
/// that keeps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Statements {
    New,
    Cached,
}

/// [`warm`], and with [`Statements::Cached`] a run of the representative batch (tagged
/// `warm_tag`, committed), so that the batch cut next finds its statements cached.
async fn warm_with(pool: &Pool, statements: Statements, warm_tag: &str) {
    warm(pool).await;
    if statements == Statements::Cached {
        keyed(warm_tag, None).0.run(pool).await.expect("the warming batch commits");
    }
}

/// How many bytes one run of the representative batch sends and receives.
async fn measure(faults: &Faults, name: &str, statements: Statements) -> (u64, u64) {
    let (proxy, pool) = proxied(faults, name).await;
    warm_with(&pool, statements, &tag(name, 999_998)).await;
    let (client, server) = (proxy.client_bytes(), proxy.server_bytes());
    keyed(&tag(name, 999_999), None).0.run(&pool).await.expect("the batch commits");
    (proxy.client_bytes() - client, proxy.server_bytes() - server)
}

/// Cuts the connection after exactly k bytes of the request (`client`) or of the answers,
/// for every k that is a multiple of `stride` (1 at full size: every byte), and the last;
/// with the batch's statements new to the connection or cached on it.
async fn byte_cuts(faults: &Faults, client: bool, stride: u64, statements: Statements) -> Sweep {
    let name = match (client, statements) {
        (true, Statements::New) => "sweep-cut-request",
        (false, Statements::New) => "sweep-cut-answers",
        (true, Statements::Cached) => "sweep-cut-request-cached",
        (false, Statements::Cached) => "sweep-cut-answers-cached",
    };
    let (request, answers) = measure(faults, name, statements).await;
    let total = if client { request } else { answers };
    let mut sweep = Sweep::default();
    let (proxy, mut pool) = proxied(faults, name).await;
    for k in (0..=total).filter(|k| k % stride == 0 || *k == total) {
        pool = pool_via(faults, &proxy, name).await;
        warm_with(&pool, statements, &tag(name, 500_000 + k)).await;
        proxy.arm(if client { Fault::CutAfterClientBytes(k) } else { Fault::CutAfterServerBytes(k) });
        let tag = tag(name, k);
        let fired = proxy.cuts();
        let result = keyed(&tag, None).0.run(&pool).await;
        assert_eq!(proxy.cuts(), fired + 1, "{name}: the cut after {k} of {total} bytes fired");
        sweep.judge(faults, name, &tag, &Verdict::of(&result)).await;
    }
    pool_runs(&pool, name).await;
    sweep
}

/// The pool still runs batches.
async fn pool_runs(pool: &Pool, name: &str) {
    let tag = format!("{name}-after");
    create_project(&tag, 1).run(pool).await.expect("the pool serves batches after the faults");
}

/// Cuts a stream carrying `CALLERS` callers' keyed batches, multiplexed on one shared
/// connection, after k bytes of the requests (`client`) or of the answers, for a spread of
/// k over the whole stream: each batch in flight gets its own verdict, judged as any other.
async fn multiplexed_cuts(faults: &Faults, client: bool, points: usize) -> Sweep {
    const CALLERS: u64 = 3;
    let name = if client { "sweep-multiplexed-cut-request" } else { "sweep-multiplexed-cut-answers" };
    let proxy = faults.db.proxy().await.expect("a TCP server").start().await.expect("a proxy");
    let mut config = faults.db.config_via(&proxy);
    config.application_name(name);
    let multiplexed =
        Multiplexed::builder(ConnectionManager::new(config)).connections(1).build().await.expect("a client");
    // The callers of one case, all given to the client at once: (tag, verdict) of each.
    let callers = |case: u64| {
        let tasks: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let (client, tag) = (multiplexed.clone(), tag(name, case * CALLERS + caller));
                tokio::spawn(async move {
                    let result = keyed(&tag, None).0.run_multiplexed(&client).await;
                    (tag, Verdict::of(&result))
                })
            })
            .collect();
        async move {
            let mut verdicts = Vec::new();
            for task in tasks {
                verdicts.push(task.await.expect("a caller"));
            }
            verdicts
        }
    };
    // A connection opened before a fault is armed, so that the fault lands on the batches,
    // with the batches' statements and the reset's steps in its cache (two batches, the
    // second reset): each stream is then the same bytes, every step bound by name,
    // whichever caller's unit would otherwise have parsed them, and whatever connection
    // (a fresh one, or one a replay left) the client has.
    let warm = |case: u64| {
        let client = multiplexed.clone();
        async move {
            for round in 0..2 {
                let tag = tag(name, 900_000 + case * 2 + round);
                keyed(&tag, None).0.run_multiplexed(&client).await.expect("the shared connection works");
            }
        }
    };

    warm(99_999).await;
    let (requests, answers) = (proxy.client_bytes(), proxy.server_bytes());
    for (tag, verdict) in callers(99_999).await {
        assert!(matches!(verdict, Verdict::Committed), "{tag}: {verdict:?}");
    }
    let total = if client { proxy.client_bytes() - requests } else { proxy.server_bytes() - answers };
    let mut sweep = Sweep::default();
    for k in (0..=total).step_by((total as usize / points).max(1)) {
        warm(k).await;
        proxy.arm(if client { Fault::CutAfterClientBytes(k) } else { Fault::CutAfterServerBytes(k) });
        let fired = proxy.cuts();
        let verdicts = callers(k).await;
        assert_eq!(proxy.cuts(), fired + 1, "{name}: the cut after {k} of {total} bytes fired");
        for (tag, verdict) in verdicts {
            sweep.judge(faults, name, &tag, &verdict).await;
        }
    }
    warm(99_998).await;
    sweep
}

/// Where a dropped batch runs.
#[derive(Debug, Clone, Copy)]
enum Target {
    Bare,
    Pool,
}

/// Drops the batch future after every poll count and at a range of delays.
async fn drops(faults: &Faults) -> Sweep {
    let mut sweep = Sweep::default();
    for target in [Target::Bare, Target::Pool] {
        for two_phase in [false, true] {
            let name = format!("sweep-drop-{target:?}-{}", if two_phase { "prepare" } else { "run" }).to_lowercase();
            let config = faults.config(&name, None);
            let mut bare = Connection::connect_with(&config).await.expect("a connection");
            let pool = faults.pool(&name, None, 1).await;
            let stops =
                (1..=8).map(Stop::Polls).chain((0..=40).step_by(4).map(|ms| Stop::After(Duration::from_millis(ms))));
            for (case, stop) in stops.enumerate() {
                let tag = format!("{name}-{case}");
                let (batch, _) = keyed(&tag, Some(0.02));
                let verdict = match target {
                    Target::Bare => stop.apply(&batch, two_phase, &mut bare).await,
                    Target::Pool => stop.apply(&batch, two_phase, &pool).await,
                };
                if let Target::Bare = target {
                    // What a caller does next with the connection: its next batch first reads
                    // the dropped one's answers.
                    Batch::new().run(&mut bare).await.expect("the bare connection runs on");
                }
                sweep.judge(faults, &name, &tag, &verdict).await;
            }
            pool_runs(&pool, &name).await;
        }
    }
    sweep
}

/// When a dropped batch's future goes.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// After this many polls, a millisecond apart.
    Polls(usize),
    /// After this long.
    After(Duration),
}

impl Stop {
    async fn apply<A: pgbatch::Acquire>(self, batch: &Batch, two_phase: bool, target: A) -> Verdict {
        let future: std::pin::Pin<Box<dyn Future<Output = Verdict> + Send + '_>> = if two_phase {
            Box::pin(async move {
                match batch.prepare(target).await {
                    // Dropped undecided: rolled back.
                    Ok(prepared) => {
                        drop(prepared);
                        Verdict::NotCommitted("dropped between the phases".into())
                    }
                    Err(error) => Verdict::of::<()>(&Err(error)),
                }
            })
        } else {
            Box::pin(async move { Verdict::of(&batch.run(target).await) })
        };
        let dropped = || Verdict::Unknown("the future was dropped".into());
        match self {
            Stop::After(delay) => tokio::time::timeout(delay, future).await.unwrap_or_else(|_| dropped()),
            Stop::Polls(polls) => {
                let mut future = future;
                for _ in 0..polls {
                    if let std::task::Poll::Ready(verdict) = futures_util::poll!(&mut future) {
                        return verdict;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                dropped()
            }
        }
    }
}

/// Terminates the batch's backend at a range of delays into a batch that sleeps in its
/// middle.
async fn kills(faults: &Faults) -> Sweep {
    let mut sweep = Sweep::default();
    let name = "sweep-kill";
    let pool = faults.pool(name, None, 1).await;
    for (case, delay_ms) in (0..=60).step_by(4).enumerate() {
        let pid = pool.get().await.expect("a connection").cancel_token().process_id();
        let tag = format!("{name}-{case}");
        let (batch, _) = keyed(&tag, Some(0.03));
        let killer = async {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            faults.count(&format!("SELECT count(*) FROM pg_stat_activity WHERE pg_terminate_backend({pid})")).await;
        };
        let (result, ()) = tokio::join!(batch.run(&pool), killer);
        sweep.judge(faults, name, &tag, &Verdict::of(&result)).await;
    }
    pool_runs(&pool, name).await;
    sweep
}

/// Stalls the network after k bytes of the request while the caller's timeout drops the
/// batch: the pool must not lend the stalled connection out again.
async fn stalls(faults: &Faults) -> Sweep {
    let name = "sweep-stall";
    let (request, _) = measure(faults, name, Statements::New).await;
    let mut sweep = Sweep::default();
    for k in (0..=request).step_by((request as usize / 12).max(1)) {
        let (proxy, pool) = proxied(faults, name).await;
        warm(&pool).await;
        proxy.arm(Fault::StallAfterClientBytes(k));
        let tag = tag(name, k);
        let stalled = tokio::time::timeout(Duration::from_millis(150), keyed(&tag, None).0.run(&pool)).await;
        assert_eq!(proxy.cuts(), 1, "the stall after {k} of {request} bytes fired");
        let verdict =
            stalled.map_or_else(|_| Verdict::Unknown("dropped by the caller's timeout".into()), |r| Verdict::of(&r));
        // The next caller gets a connection that is not the stalled one, and no hang. (It
        // counts in the other silo: the stalled transaction may hold silo 1's row lock
        // until its connection is closed.)
        let next =
            tokio::time::timeout(Duration::from_secs(5), create_project(&format!("{tag}-next"), 2).run(&pool)).await;
        assert!(
            matches!(next, Ok(Ok(_))),
            "after a stall at byte {k} the pool hands out a working connection: {next:?}"
        );
        proxy.kill_all();
        sweep.judge(faults, name, &tag, &verdict).await;
    }
    sweep
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sweeps() {
    let faults = Faults::new().await;
    let size = TestSize::from_env();
    let stride = size.pick("PGBATCH_SWEEP_STRIDE", 7, 1);
    let points = size.pick("PGBATCH_SWEEP_POINTS", 30, 90);
    let crash_step_ms = size.pick("PGBATCH_SWEEP_CRASH_STEP_MS", 18, 6);
    println!(
        "fault sweeps at {size:?} size: byte cuts every {stride} byte(s), {points} cuts of a multiplexed stream a \
         side, crashes every {crash_step_ms} ms"
    );
    let mut sweep = Sweep::default();
    for statements in [Statements::New, Statements::Cached] {
        sweep.add(byte_cuts(&faults, true, stride, statements).await);
        sweep.add(byte_cuts(&faults, false, stride, statements).await);
    }
    sweep.add(multiplexed_cuts(&faults, true, points).await);
    sweep.add(multiplexed_cuts(&faults, false, points).await);
    sweep.add(drops(&faults).await);
    sweep.add(kills(&faults).await);
    sweep.add(stalls(&faults).await);
    sweep.add(crate::crash::crashes(crash_step_ms).await);
    sweep.report_and_assert("fault-sweeps");
}
