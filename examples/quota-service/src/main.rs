//! `quota-service`: the service over HTTP.
//!
//! ```sh
//! cargo run -p quota-service -- [--listen 127.0.0.1:8080] [--database postgres://postgres@127.0.0.1:5432/postgres]
//! ```
//!
//! Applies its migrations, then serves (see `quota_service::http`). Spans go to stdout
//! (`RUST_LOG=pgbatch=debug` shows every batch's span with its attributes); metrics are
//! served on `/metrics`. Without `--database`, `DATABASE_URL` or the local server.

use std::net::SocketAddr;
use std::process::ExitCode;

use metrics_exporter_prometheus::PrometheusBuilder;
use quota_service::http::{Service, migrate};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `--name value` from the command line, else `default`.
fn argument(name: &str, default: impl FnOnce() -> String) -> String {
    let arguments: Vec<String> = std::env::args().collect();
    arguments
        .iter()
        .position(|argument| argument == name)
        .and_then(|at| arguments.get(at + 1))
        .cloned()
        .unwrap_or_else(default)
}

async fn serve() -> Result<(), BoxError> {
    let listen: SocketAddr = argument("--listen", || "127.0.0.1:8080".into()).parse()?;
    let database = argument("--database", || {
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    });
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let config: pgbatch::Config = database.parse()?;
    let pool = bb8::Pool::builder().max_size(8).build(pgbatch::ConnectionManager::new(config)).await?;
    migrate(&pool).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("quota-service: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, Service::new(pool, Some(metrics)).router()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quota-service: {error}");
            ExitCode::FAILURE
        }
    }
}
