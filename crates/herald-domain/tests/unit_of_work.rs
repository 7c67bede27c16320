//! The unit of work against both real stores: atomicity of domain effects and outbox rows,
//! automatic conversion, metadata rules, handler failures and cascades. The same suite runs
//! on SQLite (a file of its own) and PostgreSQL (a schema of its own).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

macro_rules! unit_of_work_suite {
    ($backend:ident) => {
        mod $backend {
            use herald_core::{BoxError, Event, Metadata, Uuid};
            use herald_domain::{
                DomainEnvelope, DomainHandler, Error, Origin, Outgoing, Registry, Transaction,
                UnitOfWork, UnitOfWorkConfig,
            };

            use crate::common::$backend::{Fixture, Outbox};
            use crate::common::*;

            /// The repository: saves the order and hands its domain events over.
            async fn save(tx: &mut Transaction<Outbox>, order: &mut Order) -> Result<(), AppError> {
                sqlx::query("INSERT INTO orders (id, buyer, total_cents) VALUES ($1, $2, $3)")
                    .bind(&order.id)
                    .bind(&order.buyer)
                    .bind(order.total_cents)
                    .execute(tx.conn())
                    .await?;
                tx.collect(order);
                Ok(())
            }

            /// Domain handler: counts the buyer's orders, in the same transaction.
            async fn count_buyer_order(
                event: &DomainEnvelope<OrderPlaced>,
                tx: &mut Transaction<Outbox>,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO buyers (id, orders) VALUES ($1, 1) \
                     ON CONFLICT (id) DO UPDATE SET orders = buyers.orders + 1",
                )
                .bind(&event.buyer)
                .execute(tx.conn())
                .await?;
                Ok(())
            }

            /// Domain handler that always fails.
            async fn out_of_stock(
                _: &DomainEnvelope<OrderPlaced>,
                _: &mut Transaction<Outbox>,
            ) -> Result<(), BoxError> {
                Err("item out of stock".into())
            }

            /// Domain handler with state: records what it saw.
            struct Witness(SeenLog);

            impl DomainHandler<OrderPlaced, Outbox> for Witness {
                async fn handle(
                    &self,
                    event: &DomainEnvelope<OrderPlaced>,
                    _: &mut Transaction<Outbox>,
                ) -> Result<(), BoxError> {
                    self.0.push(event);
                    Ok(())
                }
            }

            impl DomainHandler<PointsEarned, Outbox> for Witness {
                async fn handle(
                    &self,
                    event: &DomainEnvelope<PointsEarned>,
                    _: &mut Transaction<Outbox>,
                ) -> Result<(), BoxError> {
                    self.0.push(event);
                    Ok(())
                }
            }

            fn registry() -> Registry<Outbox> {
                Registry::new()
                    .on(count_buyer_order)
                    .convert(order_placed_contract)
            }

            async fn place(
                uow: &UnitOfWork<Outbox>,
                buyer: &str,
                internal: bool,
            ) -> Result<String, AppError> {
                uow.run(async |tx| {
                    let mut order = Order::place(buyer, 4_200, internal);
                    save(tx, &mut order).await?;
                    Ok(order.id)
                })
                .await
            }

            #[tokio::test]
            async fn committed_unit_of_work_records_domain_effects_and_integration_events_together() {
                let db = Fixture::new().await;
                let uow = UnitOfWork::new(db.outbox.clone(), registry());
                let order_id = place(&uow, "ada", false).await.unwrap();

                assert_eq!(db.count("orders").await, 1);
                assert_eq!(db.count("buyers").await, 1, "the domain handler ran");
                let recorded = outbox_rows(&db.outbox).await;
                assert_eq!(recorded.len(), 1);
                assert_eq!(
                    recorded[0].decode::<contracts::OrderPlaced>().unwrap(),
                    contracts::OrderPlaced { order_id, total_cents: 4_200 }
                );
                db.cleanup().await;
            }

            #[tokio::test]
            async fn rolled_back_unit_of_work_records_neither_domain_effects_nor_outbox_rows() {
                let db = Fixture::new().await;
                let uow = UnitOfWork::new(db.outbox.clone(), registry());

                // The work fails after saving the aggregate.
                let result: Result<(), AppError> = uow
                    .run(async |tx| {
                        let mut order = Order::place("ada", 4_200, false);
                        save(tx, &mut order).await?;
                        Err(AppError::Rejected("credit limit"))
                    })
                    .await;
                assert!(matches!(result, Err(AppError::Rejected("credit limit"))));

                // Explicit rollback, and a transaction dropped without commit.
                let mut tx = uow.begin().await.unwrap();
                save(&mut tx, &mut Order::place("ada", 1, false)).await.unwrap();
                tx.rollback().await.unwrap();
                let mut tx = uow.begin().await.unwrap();
                save(&mut tx, &mut Order::place("ada", 1, false)).await.unwrap();
                drop(tx);

                // Dispatch ran (a handler wrote, a converter converted), then encoding a
                // second-generation integration event failed.
                let registry = registry().on(
                    async |event: &DomainEnvelope<OrderPlaced>, tx: &mut Transaction<Outbox>| {
                        tx.raise(event.aggregate_id.clone(), Ping);
                        Ok::<_, BoxError>(())
                    },
                );
                let registry = registry.convert(|_: &DomainEnvelope<Ping>| {
                    let by_pair = [((1, 2), 3)].into_iter().collect();
                    Some(contracts::Unencodable { by_pair })
                });
                let failing = UnitOfWork::new(db.outbox.clone(), registry);
                let error = place(&failing, "ada", false).await.unwrap_err();
                assert!(
                    matches!(error, AppError::Domain(Error::Outbox(herald_core::Error::Encode { .. }))),
                    "{error:?}"
                );

                assert_eq!(db.count("orders").await, 0);
                assert_eq!(db.count("buyers").await, 0);
                assert!(outbox_rows(&db.outbox).await.is_empty());
                db.cleanup().await;
            }

            #[tokio::test]
            async fn a_unit_of_work_whose_commit_fails_keeps_no_outbox_row() {
                let db = Fixture::new().await;
                let uow = UnitOfWork::new(db.outbox.clone(), registry());
                // A deferred foreign key is checked at COMMIT: after dispatch, after the
                // outbox INSERT, the commit itself fails.
                let error = uow
                    .run(async |tx| {
                        let mut order = Order::place("ada", 4_200, false);
                        save(tx, &mut order).await?;
                        sqlx::query("INSERT INTO shipments (order_id) VALUES ('no-such-order')")
                            .execute(tx.conn())
                            .await?;
                        Ok::<_, AppError>(())
                    })
                    .await
                    .unwrap_err();
                let AppError::Domain(Error::Outbox(herald_core::Error::Store { operation, .. })) =
                    &error
                else {
                    panic!("expected a failed commit, got {error:?}");
                };
                assert_eq!(*operation, "commit");

                assert_eq!(db.count("orders").await, 0);
                assert_eq!(db.count("buyers").await, 0);
                assert!(outbox_rows(&db.outbox).await.is_empty());
                db.cleanup().await;
            }

            #[tokio::test]
            async fn a_failing_domain_handler_aborts_the_whole_unit_of_work() {
                let db = Fixture::new().await;
                // The first handler writes, the second fails: the first one's write goes too.
                let uow = UnitOfWork::new(db.outbox.clone(), registry().on(out_of_stock));
                let error = place(&uow, "ada", false).await.unwrap_err();
                let AppError::Domain(Error::Handler { event, source }) = &error else {
                    panic!("expected a handler error, got {error:?}");
                };
                assert!(event.ends_with("OrderPlaced"), "{event}");
                assert_eq!(source.to_string(), "item out of stock");

                assert_eq!(db.count("orders").await, 0);
                assert_eq!(db.count("buyers").await, 0);
                assert!(outbox_rows(&db.outbox).await.is_empty());
                db.cleanup().await;
            }

            #[tokio::test]
            async fn a_converter_returning_none_records_nothing() {
                let db = Fixture::new().await;
                let uow = UnitOfWork::new(db.outbox.clone(), registry());
                place(&uow, "staff", true).await.unwrap();

                assert_eq!(db.count("orders").await, 1, "the work itself committed");
                assert_eq!(db.count("buyers").await, 1, "the handler still ran");
                assert!(outbox_rows(&db.outbox).await.is_empty());
                db.cleanup().await;
            }

            #[tokio::test]
            async fn two_converters_on_one_domain_event_record_two_integration_events() {
                let db = Fixture::new().await;
                let seen = SeenLog::default();
                let registry = registry()
                    .convert(invoice_request)
                    .on::<OrderPlaced, _>(Witness(seen.clone()));
                let uow = UnitOfWork::new(db.outbox.clone(), registry);
                place(&uow, "ada", false).await.unwrap();

                let recorded = outbox_rows(&db.outbox).await;
                let types: Vec<_> = recorded.iter().map(|e| e.event_type.as_str()).collect();
                assert_eq!(
                    types,
                    [contracts::OrderPlaced::TYPE, contracts::InvoiceRequested::TYPE],
                    "in registration order"
                );
                let domain_id = seen.all()[0].id;
                assert!(recorded.iter().all(|e| e.causation_id == Some(domain_id)));
                db.cleanup().await;
            }

            #[tokio::test]
            async fn integration_events_inherit_correlation_and_are_caused_by_their_domain_event() {
                let db = Fixture::new().await;
                let seen = SeenLog::default();
                let uow = UnitOfWork::new(db.outbox.clone(), registry().on::<OrderPlaced, _>(Witness(seen.clone())));

                let correlation_id = Uuid::now_v7();
                let command_id = Uuid::now_v7();
                let origin = Origin::new()
                    .with_correlation_id(correlation_id)
                    .with_causation_id(command_id)
                    .with_header("tenant", "acme");
                let order_id = uow
                    .run_with(origin, async |tx| {
                        let mut order = Order::place("ada", 4_200, false);
                        save(tx, &mut order).await?;
                        Ok::<_, AppError>(order.id)
                    })
                    .await
                    .unwrap();

                let domain = &seen.all()[0];
                assert_eq!(domain.aggregate_id, order_id);
                assert_eq!(domain.correlation_id, correlation_id);
                assert_eq!(domain.causation_id, Some(command_id), "caused by the command");

                let recorded = outbox_rows(&db.outbox).await;
                let integration = &recorded[0];
                assert_eq!(integration.correlation_id, correlation_id, "inherited");
                assert_eq!(integration.causation_id, Some(domain.id), "caused by the domain event");
                assert_eq!(integration.headers["tenant"], "acme");
                assert!(same_micros(integration.occurred_at, domain.occurred_at));

                // Without an origin, each unit of work starts a conversation of its own.
                place(&uow, "bob", false).await.unwrap();
                place(&uow, "bob", false).await.unwrap();
                let seen = seen.all();
                let recorded = outbox_rows(&db.outbox).await;
                assert_eq!(recorded.len(), 2, "the first row is still claimed");
                for (domain, integration) in seen[1..].iter().zip(&recorded) {
                    assert_eq!(integration.correlation_id, domain.correlation_id);
                    assert_eq!(domain.causation_id, None);
                    assert_ne!(domain.correlation_id, correlation_id);
                }
                assert_ne!(recorded[0].correlation_id, recorded[1].correlation_id);
                db.cleanup().await;
            }

            #[tokio::test]
            async fn partition_key_defaults_to_the_aggregate_id_unless_the_event_or_converter_names_one() {
                let db = Fixture::new().await;
                let registry = registry()
                    .convert(invoice_request)
                    .convert(|event: &DomainEnvelope<OrderPlaced>| {
                        Outgoing::new(contracts::InvoiceRequested {
                            buyer: event.buyer.clone(),
                            total_cents: event.total_cents,
                        })
                        .with_partition_key("chosen")
                    });
                let uow = UnitOfWork::new(db.outbox.clone(), registry);
                let order_id = place(&uow, "ada", false).await.unwrap();

                let keys: Vec<_> = outbox_rows(&db.outbox)
                    .await
                    .into_iter()
                    .map(|e| e.partition_key.unwrap())
                    .collect();
                assert_eq!(keys, [order_id.as_str(), "buyer-ada", "chosen"]);
                db.cleanup().await;
            }

            #[tokio::test]
            async fn handlers_raise_further_domain_events_until_none_is_left() {
                let db = Fixture::new().await;
                let seen = SeenLog::default();
                let registry = registry()
                    .on::<OrderPlaced, _>(Witness(seen.clone()))
                    .on(
                        async |event: &DomainEnvelope<OrderPlaced>, tx: &mut Transaction<Outbox>| {
                            let points = event.total_cents / 100;
                            let buyer = event.buyer.clone();
                            tx.raise(format!("buyer-{buyer}"), PointsEarned { buyer, points });
                            tx.record(&contracts::Audited { note: "points granted".into() })?;
                            Ok::<_, Error>(())
                        },
                    )
                    .on::<PointsEarned, _>(Witness(seen.clone()))
                    .convert(|event: &DomainEnvelope<PointsEarned>| {
                        Some(contracts::PointsEarned {
                            buyer: event.buyer.clone(),
                            points: event.points,
                        })
                    });
                let uow = UnitOfWork::new(db.outbox.clone(), registry);
                let order_id = place(&uow, "ada", false).await.unwrap();

                let seen = seen.all();
                assert_eq!(seen.len(), 2);
                let (placed, earned) = (&seen[0], &seen[1]);
                assert!(earned.event.ends_with("PointsEarned"));
                assert_eq!(earned.causation_id, Some(placed.id), "raised by a handler of it");
                assert_eq!(earned.correlation_id, placed.correlation_id);
                assert_eq!(earned.aggregate_id, "buyer-ada");

                let recorded = outbox_rows(&db.outbox).await;
                let types: Vec<_> = recorded.iter().map(|e| e.event_type.as_str()).collect();
                assert_eq!(
                    types,
                    [
                        contracts::OrderPlaced::TYPE,
                        contracts::Audited::TYPE,
                        contracts::PointsEarned::TYPE
                    ]
                );
                let audited = &recorded[1];
                assert_eq!(audited.causation_id, Some(placed.id));
                assert_eq!(audited.partition_key.as_deref(), Some(order_id.as_str()));
                let points = &recorded[2];
                assert_eq!(points.causation_id, Some(earned.id));
                assert_eq!(points.partition_key.as_deref(), Some("buyer-ada"));
                assert_eq!(
                    points.decode::<contracts::PointsEarned>().unwrap(),
                    contracts::PointsEarned { buyer: "ada".into(), points: 42 }
                );
                assert!(recorded.iter().all(|e| e.correlation_id == placed.correlation_id));
                db.cleanup().await;
            }

            #[tokio::test]
            async fn handlers_raising_each_other_in_a_cycle_stop_at_the_depth_bound() {
                let db = Fixture::new().await;
                let registry = registry()
                    .on(async |event: &DomainEnvelope<OrderPlaced>, tx: &mut Transaction<Outbox>| {
                        tx.raise(event.aggregate_id.clone(), Ping);
                        Ok::<_, BoxError>(())
                    })
                    .on(async |event: &DomainEnvelope<Ping>, tx: &mut Transaction<Outbox>| {
                        tx.raise(event.aggregate_id.clone(), Pong);
                        Ok::<_, BoxError>(())
                    })
                    .on(async |event: &DomainEnvelope<Pong>, tx: &mut Transaction<Outbox>| {
                        tx.raise(event.aggregate_id.clone(), Ping);
                        Ok::<_, BoxError>(())
                    });
                let config = UnitOfWorkConfig { max_depth: 4 };
                let uow = UnitOfWork::with_config(db.outbox.clone(), registry, config);
                let error = place(&uow, "ada", false).await.unwrap_err();
                assert!(
                    matches!(error, AppError::Domain(Error::TooDeep { depth: 5, max_depth: 4, .. })),
                    "{error:?}"
                );
                assert_eq!(db.count("orders").await, 0);
                assert!(outbox_rows(&db.outbox).await.is_empty());
                db.cleanup().await;
            }

            #[tokio::test]
            async fn units_of_work_run_on_spawned_tasks_concurrently() {
                let db = Fixture::new().await;
                let uow = UnitOfWork::new(db.outbox.clone(), registry());
                let tasks: Vec<_> = (0..8)
                    .map(|i| {
                        let uow = uow.clone();
                        tokio::spawn(async move { place(&uow, &format!("buyer-{}", i % 3), false).await })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap().unwrap();
                }
                assert_eq!(db.count("orders").await, 8);
                assert_eq!(db.count("buyers").await, 3);
                assert_eq!(outbox_rows(&db.outbox).await.len(), 8);
                db.cleanup().await;
            }

            #[tokio::test]
            async fn begin_and_commit_work_without_a_closure() {
                let db = Fixture::new().await;
                let uow = UnitOfWork::new(db.outbox.clone(), registry());
                let incoming = herald_core::Envelope::from_event(
                    &contracts::Audited { note: "upstream".into() },
                    Metadata::default(),
                )
                .unwrap();

                let mut tx = uow.begin_with(Origin::caused_by(&incoming)).await.unwrap();
                let mut order = Order::place("ada", 4_200, false);
                save(&mut tx, &mut order).await.unwrap();
                let direct = tx
                    .record_with(
                        &contracts::Audited { note: "direct".into() },
                        Metadata::default().with_partition_key("audit"),
                    )
                    .unwrap();
                tx.commit().await.unwrap();

                let recorded = outbox_rows(&db.outbox).await;
                assert_eq!(recorded.len(), 2);
                assert!(recorded.iter().all(|e| e.correlation_id == incoming.correlation_id));
                let audited = recorded.iter().find(|e| e.id == direct).unwrap();
                assert_eq!(audited.causation_id, Some(incoming.id), "caused by the message handled");
                assert_eq!(audited.partition_key.as_deref(), Some("audit"));
                assert_eq!(db.count("buyers").await, 1);
                db.cleanup().await;
            }
        }
    };
}

unit_of_work_suite!(sqlite);
unit_of_work_suite!(postgres);
