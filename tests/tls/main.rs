//! TLS as libpq's `sslmode` means it, against a private cluster that accepts only `hostssl`
//! connections, with a certificate for `localhost` signed by a throwaway CA (made with the
//! `openssl` command).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use pgbatch::{Batch, Config, ConnectError, Connection, ConnectionManager};
use pgbatch_testing::LocalCluster;
use tokio::sync::OnceCell;

/// The TLS-only server, shared by the tests of this binary.
struct TlsServer {
    cluster: LocalCluster,
    /// Holds `ca.crt` (signed the server's certificate) and `other-ca.crt` (did not).
    certificates: PathBuf,
}

impl TlsServer {
    /// A URL for `host` with `sslmode` and the given root certificate file, if any.
    fn url(&self, host: &str, sslmode: &str, root: Option<&str>) -> String {
        let root =
            root.map(|file| format!("&sslrootcert={}", self.certificates.join(file).display())).unwrap_or_default();
        format!("postgres://postgres@{host}:{}/postgres?sslmode={sslmode}{root}", self.cluster.port())
    }
}

static SERVER: OnceCell<TlsServer> = OnceCell::const_new();

async fn server() -> &'static TlsServer {
    SERVER.get_or_init(|| async { tokio::task::spawn_blocking(start_server).await.unwrap() }).await
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl command");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for `localhost` signed by it, and a second, unrelated CA.
fn make_certificates(dir: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&dir).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subject) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN=pgbatch test {ca}"));
        let mut args = vec!["req", "-x509", "-days", "30", "-subj", &subject, "-keyout", &key, "-out", &crt];
        args.extend(ec);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]);
        openssl(&dir, &args);
    }
    let mut args = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"];
    args.extend(ec);
    openssl(&dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    dir
}

fn start_server() -> TlsServer {
    let cluster = LocalCluster::start(&[]).expect("a private cluster");
    // Inside the data directory, which goes with the cluster.
    let certificates = make_certificates(cluster.data_dir().join("test-certificates"));
    for file in ["server.crt", "server.key"] {
        cluster.write_private_file(file, &std::fs::read(certificates.join(file)).unwrap()).unwrap();
    }
    cluster
        .reconfigure(&[("ssl", "on"), ("ssl_cert_file", "server.crt"), ("ssl_key_file", "server.key")])
        .expect("TLS settings");
    cluster.set_hba("local all all trust\nhostssl all all 127.0.0.1/32 trust\n").expect("a TLS-only pg_hba.conf");
    let server = TlsServer { cluster, certificates };
    // A reload takes effect a moment later: wait until TLS is offered and clear text refused.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    runtime.block_on(async {
        loop {
            let tls = Connection::connect(&server.url("127.0.0.1", "require", None)).await.is_ok();
            let clear = Connection::connect(&server.url("127.0.0.1", "disable", None)).await.is_ok();
            if tls && !clear {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never became TLS-only (tls {tls}, clear {clear})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    server
}

/// Runs a batch that reads a column of `pg_stat_ssl` (as text) for its own session.
async fn own_ssl_status(connection: &mut Connection, column: &str) -> String {
    let mut batch = Batch::new();
    let value = batch
        .push(diesel::select(diesel::dsl::sql::<Text>(&format!(
            "(SELECT {column}::text FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid())"
        ))))
        .one();
    batch.run(connection).await.expect("a batch").get(&value).unwrap()
}

/// Runs a batch that reports whether its own session is encrypted.
async fn batch_sees_tls(connection: &mut Connection) -> bool {
    own_ssl_status(connection, "ssl").await == "true"
}

#[tokio::test]
async fn require_encrypts_without_verifying_and_runs_batches() {
    let server = server().await;
    // 127.0.0.1 is not the name on the certificate, and no root is given: require accepts.
    let mut connection = Connection::connect(&server.url("127.0.0.1", "require", None)).await.unwrap();
    assert!(batch_sees_tls(&mut connection).await);
}

#[tokio::test]
async fn prefer_uses_tls_when_offered() {
    let server = server().await;
    let mut connection = Connection::connect(&server.url("127.0.0.1", "prefer", None)).await.unwrap();
    assert!(batch_sees_tls(&mut connection).await);
}

/// An application that installs a process-wide rustls provider (as it would to choose
/// aws-lc-rs's post-quantum key exchange) has pgbatch use it. The provider installed here
/// offers one cipher suite only, which the server then reports; ring's own provider
/// prefers AES-256-GCM, so the test cannot pass on the fallback. Installing it changes the
/// provider of this binary's other tests too, which all still work: it is ring's, narrowed.
#[tokio::test]
async fn a_crypto_provider_the_application_installed_is_the_one_used() {
    use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
    let server = server().await;
    #[allow(deprecated)] // rustls 0.23.48 deprecates ring's provider; it is what the test narrows.
    let narrowed = CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        ..ring::default_provider()
    };
    // Another test of this binary may not install one: this is the only one that does.
    narrowed.install_default().expect("no provider was installed before");
    let mut connection = Connection::connect(&server.url("127.0.0.1", "require", None)).await.unwrap();
    assert_eq!(own_ssl_status(&mut connection, "cipher").await, "TLS_CHACHA20_POLY1305_SHA256");
}

#[tokio::test]
async fn verify_full_connects_to_the_named_host_and_a_pool_runs_batches() {
    let server = server().await;
    let config: Config = server.url("localhost", "verify-full", Some("ca.crt")).parse().unwrap();
    let pool = bb8::Pool::builder().max_size(2).build(ConnectionManager::new(config)).await.unwrap();
    let mut pooled = pool.get().await.unwrap();
    assert!(batch_sees_tls(&mut pooled).await);
}

#[tokio::test]
async fn verify_full_refuses_a_host_the_certificate_does_not_name() {
    let server = server().await;
    let error = Connection::connect(&server.url("127.0.0.1", "verify-full", Some("ca.crt"))).await.unwrap_err();
    let ConnectError::Tls { reason, .. } = &error else { panic!("a TLS error: {error}") };
    assert!(reason.contains("does not name this host"), "{error}");
    assert!(reason.contains("verify-ca"), "says what to do instead: {error}");
}

#[tokio::test]
async fn verify_ca_accepts_any_host_name_but_checks_the_ca() {
    let server = server().await;
    let mut connection = Connection::connect(&server.url("127.0.0.1", "verify-ca", Some("ca.crt"))).await.unwrap();
    assert!(batch_sees_tls(&mut connection).await);
    let error = Connection::connect(&server.url("127.0.0.1", "verify-ca", Some("other-ca.crt"))).await.unwrap_err();
    assert!(matches!(&error, ConnectError::Tls { reason, .. } if reason.contains("not signed by a CA")), "{error}");
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_another_ca() {
    let server = server().await;
    let error = Connection::connect(&server.url("localhost", "verify-full", Some("other-ca.crt"))).await.unwrap_err();
    let ConnectError::Tls { reason, .. } = &error else { panic!("a TLS error: {error}") };
    assert!(reason.contains("not signed by a CA in sslrootcert"), "{error}");
}

#[tokio::test]
async fn verify_full_without_a_root_certificate_says_which_setting_is_missing() {
    let server = server().await;
    let error = Connection::connect(&server.url("localhost", "verify-full", None)).await.unwrap_err();
    assert!(matches!(&error, ConnectError::Config(message) if message.contains("sslrootcert")), "{error}");
}

#[tokio::test]
async fn require_with_the_wrong_root_certificate_is_refused() {
    // libpq: require verifies the chain when a root certificate is given.
    let server = server().await;
    let error = Connection::connect(&server.url("127.0.0.1", "require", Some("other-ca.crt"))).await.unwrap_err();
    assert!(matches!(error, ConnectError::Tls { .. }), "{error}");
}

#[tokio::test]
async fn disable_is_refused_by_the_server() {
    let server = server().await;
    let error = Connection::connect(&server.url("127.0.0.1", "disable", None)).await.unwrap_err();
    let ConnectError::Server { error: server_error, .. } = &error else { panic!("the server refuses: {error}") };
    assert_eq!(server_error.code().code(), "28000", "{error}");
    assert!(server_error.message().contains("no encryption"), "{error}");
}

/// A two-phase batch dropped undecided queues its `ROLLBACK` without waiting; over TLS that
/// message passes through the TLS layer's own buffer, and must still reach the server before
/// the connection's next batch: the dropped transaction's row is never seen.
#[tokio::test]
async fn a_two_phase_batch_dropped_undecided_over_tls_rolls_back() {
    let server = server().await;
    let mut connection = Connection::connect(&server.url("127.0.0.1", "require", None)).await.unwrap();
    let table = "tls_dropped_two_phase";
    let mut setup = Batch::new();
    setup.push(diesel::sql_query(format!("CREATE TABLE {table} (n int)")));
    setup.run(&mut connection).await.unwrap();

    let mut batch = Batch::new();
    batch.push(diesel::sql_query(format!("INSERT INTO {table} VALUES (1)")));
    let prepared = batch.prepare(&mut connection).await.unwrap();
    drop(prepared);

    let mut check = Batch::new();
    let rows = check
        .push(diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!("(SELECT count(*) FROM {table})"))))
        .one::<i64>();
    let committed = check.run(&mut connection).await.expect("the connection is clean after the drop");
    assert_eq!(committed.get(&rows).unwrap(), 0, "the dropped transaction was rolled back");
    assert!(batch_sees_tls(&mut connection).await);
}

/// The example binary `cargo` built beside this test (`cargo test` builds the examples).
fn example_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().expect("the test binary's path");
    let binary = deps.parent().and_then(|deps| deps.parent()).expect("target/<profile>").join("examples").join(name);
    assert!(binary.is_file(), "{} is missing: build it with `cargo build --example {name}`", binary.display());
    binary
}

/// README's TLS command (`DATABASE_URL='...?sslmode=verify-full&sslrootcert=...' cargo run
/// --example create_project`) and a `sslmode=require` URL, against a server that accepts TLS
/// only: the example's harness creates, fills and drops its database over TLS as pgbatch
/// makes it, and its pool verifies the server as the URL asks.
#[tokio::test]
async fn the_readme_tls_command_runs_the_example_against_a_tls_only_server() {
    let server = server().await;
    let binary = example_binary("create_project");
    let run_with = |url: String| {
        let binary = binary.clone();
        async move {
            tokio::task::spawn_blocking(move || Command::new(binary).env("DATABASE_URL", url).output())
                .await
                .unwrap()
                .expect("the example runs")
        }
    };
    for url in [server.url("localhost", "verify-full", Some("ca.crt")), server.url("127.0.0.1", "require", None)] {
        let run = run_with(url.clone()).await;
        let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
        assert!(run.status.success(), "{url}: {stdout}{stderr}");
        assert!(stdout.contains("created:"), "{url}: {stdout}");
    }
    // A certificate from another CA fails the example, naming the cause.
    let refused = run_with(server.url("localhost", "verify-full", Some("other-ca.crt"))).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
}
