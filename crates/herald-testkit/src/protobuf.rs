//! Protobuf and JSON events in one outbox: the events, and what a consumer must make of them.
//!
//! [`mixed`] gives the envelopes to record (in one outbox) and what a consumer with a JSON
//! handler of [`OrderPlaced`], a Protobuf handler of [`OrderShipped`] and the upcaster
//! [`upcast_shipped`] must end with: every well-formed event handled with each field as it
//! was recorded, the Protobuf ones still naming their message (`dataschema`), and the four
//! that cannot be read dead-lettered whole, with the reason. Each transport's tests run it
//! through the relay and the consumer (`herald-consumer`'s `tests/protobuf.rs` on the
//! in-memory transport and RabbitMQ, `herald-kafka`'s on Kafka).
//!
//! The messages are written by hand, as `prost-build` would generate them from:
//!
//! ```text
//! syntax = "proto3";
//! package shipping.v2;
//! enum Speed { SPEED_STANDARD = 0; SPEED_EXPRESS = 1; SPEED_SAME_DAY = 2; }
//! message Address { string city = 1; string postcode = 2; }
//! message OrderShipped {
//!   int64 order_id = 1; string carrier = 2; bool insured = 3; uint32 weight_grams = 4;
//!   double fee = 5; bytes label = 6; repeated string parcels = 7; Address destination = 8;
//!   Speed speed = 9; optional string note = 10;
//! }
//! ```

use herald_core::{DeadLetter, Envelope, Event, Metadata, Payload, Protobuf, Uuid};
use serde::{Deserialize, Serialize};

use crate::OrderPlaced;

/// How fast a parcel travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Speed {
    /// The default.
    Standard = 0,
    /// Next day.
    Express = 1,
    /// Today.
    SameDay = 2,
}

/// Where a parcel goes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    /// The city.
    #[prost(string, tag = "1")]
    pub city: String,
    /// Its postcode.
    #[prost(string, tag = "2")]
    pub postcode: String,
}

/// An order left the warehouse: a Protobuf event, version 2, with a field of each kind.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderShipped {
    /// The order (its partition key is `order-{order_id}`).
    #[prost(int64, tag = "1")]
    pub order_id: i64,
    /// Who carries it.
    #[prost(string, tag = "2")]
    pub carrier: String,
    /// Whether it is insured.
    #[prost(bool, tag = "3")]
    pub insured: bool,
    /// Its weight.
    #[prost(uint32, tag = "4")]
    pub weight_grams: u32,
    /// What shipping cost.
    #[prost(double, tag = "5")]
    pub fee: f64,
    /// The printed label.
    #[prost(bytes = "vec", tag = "6")]
    pub label: Vec<u8>,
    /// The parcels' tracking numbers.
    #[prost(string, repeated, tag = "7")]
    pub parcels: Vec<String>,
    /// Where it goes.
    #[prost(message, optional, tag = "8")]
    pub destination: Option<Address>,
    /// How fast.
    #[prost(enumeration = "Speed", tag = "9")]
    pub speed: i32,
    /// A note, when there is one.
    #[prost(string, optional, tag = "10")]
    pub note: Option<String>,
}

impl prost::Name for OrderShipped {
    const NAME: &'static str = "OrderShipped";
    const PACKAGE: &'static str = "shipping.v2";
}

impl Payload for OrderShipped {
    type Codec = Protobuf;
}

impl Event for OrderShipped {
    const TYPE: &'static str = "shipping.order_shipped";
    const VERSION: u32 = 2;

    fn partition_key(&self) -> Option<String> {
        Some(format!("order-{}", self.order_id))
    }
}

/// What producers recorded before version 2: a Protobuf event too, of another package.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderShippedV1 {
    /// The order.
    #[prost(int64, tag = "1")]
    pub order_id: i64,
    /// Who carries it.
    #[prost(string, tag = "2")]
    pub carrier: String,
}

impl prost::Name for OrderShippedV1 {
    const NAME: &'static str = "OrderShipped";
    const PACKAGE: &'static str = "shipping.v1";
}

impl Payload for OrderShippedV1 {
    type Codec = Protobuf;
}

impl Event for OrderShippedV1 {
    const TYPE: &'static str = OrderShipped::TYPE;

    fn partition_key(&self) -> Option<String> {
        Some(format!("order-{}", self.order_id))
    }
}

/// The upcaster of [`OrderShippedV1`]: version 1 knew nothing of the rest.
pub fn upcast_shipped(v1: OrderShippedV1) -> OrderShipped {
    OrderShipped {
        order_id: v1.order_id,
        carrier: v1.carrier,
        note: Some("recorded as v1".into()),
        ..OrderShipped::default()
    }
}

/// A producer that records `ordering.order_placed` in Protobuf, where its consumers read JSON.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderPlacedInProtobuf {
    /// The order.
    #[prost(int64, tag = "1")]
    pub order_id: i64,
}

impl prost::Name for OrderPlacedInProtobuf {
    const NAME: &'static str = "OrderPlaced";
    const PACKAGE: &'static str = "ordering.v1";
}

impl Payload for OrderPlacedInProtobuf {
    type Codec = Protobuf;
}

impl Event for OrderPlacedInProtobuf {
    const TYPE: &'static str = OrderPlaced::TYPE;
}

/// A producer that records `shipping.order_shipped` v2 in JSON, where its consumers read
/// Protobuf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderShippedInJson {
    /// The order.
    pub order_id: i64,
}

impl Event for OrderShippedInJson {
    const TYPE: &'static str = OrderShipped::TYPE;
    const VERSION: u32 = OrderShipped::VERSION;
}

/// Another message under `shipping.order_shipped` v2, whose bytes would decode as an
/// [`OrderShipped`] without a word: only its name (`dataschema`) tells them apart.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ParcelShipped {
    /// The parcel.
    #[prost(int64, tag = "1")]
    pub parcel_id: i64,
}

impl prost::Name for ParcelShipped {
    const NAME: &'static str = "ParcelShipped";
    const PACKAGE: &'static str = "shipping.v2";
}

impl Payload for ParcelShipped {
    type Codec = Protobuf;
}

impl Event for ParcelShipped {
    const TYPE: &'static str = OrderShipped::TYPE;
    const VERSION: u32 = OrderShipped::VERSION;
}

/// The `n`-th shipment of a run, every field set (zero values are not on the wire, so each
/// field is given one that is).
pub fn shipped(order_id: i64, n: u32) -> OrderShipped {
    OrderShipped {
        order_id,
        carrier: format!("carrier-{n} ✈"),
        insured: n.is_multiple_of(2),
        weight_grams: 1_000 + n,
        fee: 4.95 + f64::from(n),
        label: vec![0, 255, n as u8, 10],
        parcels: vec![format!("P-{order_id}-a"), format!("P-{order_id}-b")],
        destination: Some(Address {
            city: "Zürich".into(),
            postcode: format!("80{n:02}"),
        }),
        speed: (if n.is_multiple_of(2) {
            Speed::Express
        } else {
            Speed::SameDay
        }) as i32,
        note: (!n.is_multiple_of(2)).then(|| format!("note {n}")),
    }
}

/// A dead letter the consumer must write: the message, and words its reason must contain.
#[derive(Debug, Clone)]
pub struct ExpectedDeadLetter {
    /// The message, as recorded.
    pub envelope: Envelope,
    /// Words of the reason.
    pub reason: &'static str,
}

/// One outbox's worth of mixed events and what a consumer must make of them.
#[derive(Debug, Clone)]
pub struct Mixed {
    /// Everything to record, in order: JSON and Protobuf events interleaved.
    pub envelopes: Vec<Envelope>,
    /// The JSON events the `OrderPlaced` handler must see, by message id.
    pub placed: Vec<(Uuid, OrderPlaced)>,
    /// The Protobuf events the `OrderShipped` handler must see, by message id (the v1 ones
    /// upcast).
    pub shipped: Vec<(Uuid, OrderShipped)>,
    /// The messages no handler can read.
    pub dead: Vec<ExpectedDeadLetter>,
}

/// What an [`OrderShipped`] handler saw of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenShipped {
    /// The message id.
    pub id: Uuid,
    /// The event.
    pub event: OrderShipped,
    /// The envelope's content type.
    pub content_type: String,
    /// The envelope's `dataschema`.
    pub dataschema: Option<String>,
}

fn envelope<E: Event>(event: &E) -> Envelope {
    match Envelope::from_event(event, Metadata::default()) {
        Ok(envelope) => envelope,
        Err(err) => panic!("test event must encode: {err}"),
    }
}

/// The mixed outbox of a run: orders from `first_order` on, so that runs sharing a handler's
/// record stay apart (they are told apart by message id anyway).
pub fn mixed(first_order: i64) -> Mixed {
    let mut out = Mixed {
        envelopes: Vec::new(),
        placed: Vec::new(),
        shipped: Vec::new(),
        dead: Vec::new(),
    };
    for n in 0..4u32 {
        let order_id = first_order + i64::from(n);
        let placed = OrderPlaced {
            order_id,
            total_cents: 1_990 + i64::from(n),
        };
        let env = envelope(&placed);
        out.placed.push((env.id, placed));
        out.envelopes.push(env);

        let shipped = shipped(order_id, n);
        let env = envelope(&shipped);
        out.shipped.push((env.id, shipped));
        out.envelopes.push(env);
    }
    let old = OrderShippedV1 {
        order_id: first_order + 10,
        carrier: "post".into(),
    };
    let env = envelope(&old);
    out.shipped.push((env.id, upcast_shipped(old)));
    out.envelopes.push(env);

    let mut dead = |envelope: Envelope, reason| {
        out.envelopes.push(envelope.clone());
        out.dead.push(ExpectedDeadLetter { envelope, reason });
    };
    dead(
        envelope(&OrderPlacedInProtobuf {
            order_id: first_order + 20,
        }),
        "content type `application/protobuf` cannot be read by the json codec",
    );
    dead(
        envelope(&OrderShippedInJson {
            order_id: first_order + 21,
        }),
        "content type `application/json` cannot be read by the protobuf codec",
    );
    dead(
        envelope(&ParcelShipped {
            parcel_id: first_order + 22,
        }),
        "payload follows schema `shipping.v2.ParcelShipped`, expected `shipping.v2.OrderShipped`",
    );
    // Field 1 with wire type 7, which does not exist.
    let mut malformed = envelope(&shipped(first_order + 23, 0));
    malformed.payload = herald_core::Bytes::from_static(b"\x0f\x01\x02");
    dead(
        malformed,
        "cannot decode payload of `shipping.order_shipped` v2: failed to decode Protobuf message",
    );
    out
}

impl Mixed {
    /// Checks what the handlers saw and what was dead-lettered against what was recorded:
    /// each event handled once with every field intact (the Protobuf ones still
    /// `application/protobuf` and naming `shipping.v2.OrderShipped`), and each unreadable
    /// message dead-lettered as it was recorded, with its reason. `placed` and `shipped` may
    /// hold other runs' messages: only this run's ids count.
    pub fn check(
        &self,
        placed: &[(Uuid, OrderPlaced)],
        shipped: &[SeenShipped],
        letters: &[DeadLetter],
    ) {
        let ids: Vec<Uuid> = self.envelopes.iter().map(|e| e.id).collect();
        let mut seen_placed: Vec<_> = placed
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .cloned()
            .collect();
        seen_placed.sort_by_key(|(id, _)| *id);
        assert_eq!(seen_placed, self.placed, "the JSON events, each field");

        let mut seen_shipped: Vec<_> = shipped
            .iter()
            .filter(|s| ids.contains(&s.id))
            .cloned()
            .collect();
        seen_shipped.sort_by_key(|s| s.id);
        let expected: Vec<_> = self
            .shipped
            .iter()
            .map(|(id, event)| SeenShipped {
                id: *id,
                event: event.clone(),
                content_type: "application/protobuf".into(),
                dataschema: Some("shipping.v2.OrderShipped".into()),
            })
            .collect();
        assert_eq!(seen_shipped, expected, "the Protobuf events, each field");

        assert_eq!(
            letters.len(),
            self.dead.len(),
            "dead letters: {:#?}",
            letters.iter().map(|l| &l.reason).collect::<Vec<_>>()
        );
        for expected in &self.dead {
            let letter = letters
                .iter()
                .find(|l| l.id == Some(expected.envelope.id))
                .unwrap_or_else(|| {
                    panic!(
                        "{} ({}) was not dead-lettered",
                        expected.envelope.id, expected.reason
                    )
                });
            assert!(
                letter.reason.contains(expected.reason),
                "the reason `{}` says `{}`",
                letter.reason,
                expected.reason
            );
            let envelope = letter
                .envelope
                .as_ref()
                .unwrap_or_else(|| panic!("the dead letter of {} decodes", expected.envelope.id));
            assert_eq!(envelope.payload, expected.envelope.payload, "nothing lost");
            assert_eq!(envelope.content_type, expected.envelope.content_type);
            assert_eq!(envelope.dataschema(), expected.envelope.dataschema());
        }
    }
}
