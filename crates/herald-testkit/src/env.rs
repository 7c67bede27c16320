//! Where the test services listen: the variables that `scripts/env` exports, with the same
//! defaults (the servers `scripts/services` sets up on loopback). Every test, benchmark and
//! chaos run reads its URLs here, so the two places cannot drift apart (a test checks it).

/// PostgreSQL's URL when `HERALD_TEST_DATABASE_URL` is not set.
pub const DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/test";
/// RabbitMQ's URL when `HERALD_TEST_AMQP_URL` is not set.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Kafka's bootstrap servers when `HERALD_TEST_KAFKA` is not set.
pub const KAFKA: &str = "127.0.0.1:9092";

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The test database: `HERALD_TEST_DATABASE_URL`, or [`DATABASE_URL`].
pub fn database_url() -> String {
    var("HERALD_TEST_DATABASE_URL", DATABASE_URL)
}

/// The test broker: `HERALD_TEST_AMQP_URL`, or [`AMQP_URL`].
pub fn amqp_url() -> String {
    var("HERALD_TEST_AMQP_URL", AMQP_URL)
}

/// The test Kafka cluster: `HERALD_TEST_KAFKA`, or [`KAFKA`].
pub fn kafka() -> String {
    var("HERALD_TEST_KAFKA", KAFKA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_those_of_scripts_env() {
        let script = include_str!("../../../scripts/env");
        for (name, default) in [
            ("HERALD_TEST_DATABASE_URL", DATABASE_URL),
            ("HERALD_TEST_AMQP_URL", AMQP_URL),
            ("HERALD_TEST_KAFKA", KAFKA),
        ] {
            let line = format!(": \"${{{name}:={default}}}\"");
            assert!(
                script.lines().any(|l| l == line),
                "scripts/env should say `{line}`"
            );
        }
    }
}
