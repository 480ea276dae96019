//! The event stream for downstream services: every change, published to NATS JetStream.
//!
//! Subjects are `<stream>.<ResourceType>.<interaction>` (`ironfhir.MedicationRequest.create`):
//! a resource type and an interaction name, never an id or a value. Each message's id
//! (`Nats-Msg-Id`) is the outbox event id, so JetStream drops the copies a retried batch sends
//! again; the payload names the resource and its version and nothing else — a consumer that
//! needs the content reads it through the API, under its own access token.
//!
//! Publishing goes through [`EventSink`], so a Kafka (or any log) producer can take NATS's
//! place without the outbox changing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::outbox::{ConsumeFuture, Consumer, OutboxEvent};
use crate::store::Tx;

/// The outbox consumer name of the stream.
pub const CONSUMER: &str = "stream";

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// `ResourceType.interaction`, appended to the sink's subject prefix.
    pub subject: String,
    /// De-duplication id (the outbox event id).
    pub message_id: String,
    pub payload: Vec<u8>,
}

/// The future of a publish.
pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Where stream messages go. `publish` returns once every message is durably accepted (in
/// order); an error means some may not be, and the whole batch is published again.
pub trait EventSink: Send + Sync + 'static {
    fn publish<'a>(&'a self, messages: &'a [StreamMessage]) -> PublishFuture<'a>;
}

/// The id-only message of one event.
pub fn message(event: &OutboxEvent) -> StreamMessage {
    let payload = json!({
        "eventId": event.event_id,
        "resourceType": event.resource_type,
        "id": event.id,
        "versionId": event.version_id.to_string(),
        "interaction": event.interaction,
        "recorded": event.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    });
    StreamMessage {
        subject: format!("{}.{}", event.resource_type, event.interaction),
        message_id: event.event_id.to_string(),
        payload: payload.to_string().into_bytes(),
    }
}

/// The outbox consumer that publishes each batch to a sink.
pub struct StreamConsumer {
    sink: Arc<dyn EventSink>,
}

impl StreamConsumer {
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        StreamConsumer { sink }
    }
}

impl Consumer for StreamConsumer {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn consume<'a>(&'a self, _tx: &'a mut Tx, events: &'a [OutboxEvent]) -> ConsumeFuture<'a> {
        Box::pin(async move {
            let messages: Vec<StreamMessage> = events.iter().map(message).collect();
            self.sink.publish(&messages).await
        })
    }
}

/// NATS JetStream: one stream whose subjects are `<name>.>`, with a de-duplication window
/// longer than any retry of a batch.
pub struct NatsSink {
    jetstream: async_nats::jetstream::Context,
    prefix: String,
}

impl NatsSink {
    /// Connects and makes sure the stream exists.
    pub async fn connect(url: &str, name: &str) -> Result<Self, String> {
        let client = async_nats::connect(url).await.map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
        let jetstream = async_nats::jetstream::new(client);
        let stream_name = name.to_ascii_uppercase().replace(['.', ' ', '*', '>'], "_");
        jetstream
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: stream_name.clone(),
                subjects: vec![format!("{name}.>")],
                duplicate_window: Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create the JetStream stream {stream_name}: {e}"))?;
        Ok(NatsSink { jetstream, prefix: name.to_owned() })
    }
}

impl EventSink for NatsSink {
    fn publish<'a>(&'a self, messages: &'a [StreamMessage]) -> PublishFuture<'a> {
        Box::pin(async move {
            // Send them all, then wait for the acknowledgements: one connection keeps the
            // order, and the round trips overlap.
            let mut acks = Vec::with_capacity(messages.len());
            for m in messages {
                let publish = async_nats::jetstream::message::PublishMessage::build().payload(m.payload.clone().into()).message_id(m.message_id.as_str());
                let ack = self.jetstream.send_publish(format!("{}.{}", self.prefix, m.subject), publish).await.map_err(|e| format!("NATS publish: {e}"))?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(|e| format!("NATS acknowledgement: {e}"))?;
            }
            Ok(())
        })
    }
}
