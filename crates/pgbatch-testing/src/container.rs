//! A throwaway PostgreSQL container, started through testcontainers.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::postgres::Postgres;
use tokio_postgres::Config;

/// The image started when `PGBATCH_TEST_IMAGE` names none: a PostgreSQL release in
/// support (testcontainers' own default, `postgres:11-alpine`, has been out of support
/// since 2023).
pub const DEFAULT_IMAGE: &str = "postgres:18";

/// The variable that names the image, `name[:tag]` (tag `latest` when left out).
pub(crate) const IMAGE_VARIABLE: &str = "PGBATCH_TEST_IMAGE";

/// A running container and the configuration that reaches it as its superuser.
pub(crate) struct Started {
    pub(crate) config: Config,
    /// Held for the process's lifetime; a watchdog removes the container when the
    /// process exits (a static is never dropped).
    pub(crate) container: ContainerAsync<Postgres>,
}

/// The image to start: `PGBATCH_TEST_IMAGE` or [`DEFAULT_IMAGE`].
pub(crate) fn image() -> String {
    std::env::var(IMAGE_VARIABLE).ok().filter(|value| !value.trim().is_empty()).unwrap_or_else(|| DEFAULT_IMAGE.into())
}

/// `name[:tag]` split into name and tag. A colon before the last `/` belongs to a
/// registry's port (`localhost:5000/postgres`), not to a tag.
fn name_and_tag(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') && !tag.is_empty() => (name, tag),
        _ => (image, "latest"),
    }
}

/// Starts a container of `image` (any image that behaves as the official `postgres` one:
/// `POSTGRES_USER`/`POSTGRES_PASSWORD`/`POSTGRES_DB`, the ready message) and says on
/// stderr which image and how long it took to be ready.
///
/// # Errors
///
/// testcontainers' error as text: no Docker daemon, no such image, or a container that
/// never became ready.
pub(crate) async fn start(image: &str) -> Result<Started, String> {
    let (name, tag) = name_and_tag(image);
    let started = Instant::now();
    let container = Postgres::default().with_name(name).with_tag(tag).start().await.map_err(|e| e.to_string())?;
    // A static holds the container, so it is never dropped: a watchdog removes it when this
    // process exits, as it stops a private cluster.
    let cleanup = "docker rm -f -v \"$WATCHED\" >/dev/null 2>&1";
    crate::cluster::spawn_watchdog(cleanup, Path::new(container.id()), "a test container")
        .map_err(|e| e.to_string())?;
    let host = container.get_host().await.map_err(|e| e.to_string())?;
    let port = container.get_host_port_ipv4(5432).await.map_err(|e| e.to_string())?;
    let mut config = Config::new();
    config.host(host.to_string()).port(port).user("postgres").password("postgres").dbname("postgres");
    // Once per process, and on stderr itself rather than through the test's captured
    // output, so that a test run's log says which server it ran against.
    let _ = writeln!(
        std::io::stderr(),
        "pgbatch-testing: container {image} ready in {} ms at {host}:{port}",
        started.elapsed().as_millis()
    );
    Ok(Started { config, container })
}

#[cfg(test)]
mod tests {
    use super::name_and_tag;

    #[test]
    fn an_image_is_split_into_name_and_tag_past_a_registry_port() {
        assert_eq!(name_and_tag("postgres:18"), ("postgres", "18"));
        assert_eq!(name_and_tag("postgis/postgis"), ("postgis/postgis", "latest"));
        assert_eq!(name_and_tag("localhost:5000/postgres"), ("localhost:5000/postgres", "latest"));
        assert_eq!(name_and_tag("localhost:5000/postgres:17-alpine"), ("localhost:5000/postgres", "17-alpine"));
        assert_eq!(name_and_tag("postgres:"), ("postgres:", "latest"));
    }
}
