//! The examples run end to end (`cargo test` only builds them otherwise).

#[path = "../examples/create_order.rs"]
mod create_order;

#[test]
fn create_order_example_commits_one_order_and_one_outbox_row() {
    if let Err(error) = create_order::main() {
        panic!("the create_order example failed: {error}");
    }
}
