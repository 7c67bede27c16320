//! A broker that cannot be reached fails a publish call's messages as unreachable, not as
//! message-level failures: a relay then spends no attempt on them (issue 13, item 6).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_core::Publisher;
use herald_testkit::envelope;

#[tokio::test]
async fn publishing_to_a_broker_that_refuses_connections_fails_as_unreachable() {
    // Nothing listens on port 1: the connection is refused.
    let transport =
        AmqpTransport::lazy(AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f")).unwrap();
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        transport.publish(&[envelope("k", 0), envelope("k", 1)]),
    )
    .await
    .unwrap();
    assert_eq!(results.len(), 2);
    for result in results {
        let error = result.unwrap_err();
        assert!(error.is_unreachable(), "{}", error.chain());
        assert!(!error.chain().contains("guest:guest"));
    }
}
