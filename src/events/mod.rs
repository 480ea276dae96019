//! Events: telling whoever asked that something changed, without them polling.
//!
//! - [`outbox`]: every committed resource version queues an event row in its own transaction
//!   (a trigger on `resource_history`, so no write path can forget it); dispatchers on every
//!   server instance lease the outbox's partitions and hand each consumer its events at least
//!   once, in order per resource.
//! - [`stream`]: the consumer that publishes every change to NATS JetStream for downstream
//!   services (the [`stream::EventSink`] trait leaves room for a Kafka producer).
//! - [`subscriptions`]: the consumer that evaluates FHIR R4 Subscriptions (criteria searches and
//!   the Subscriptions Backport IG's topics) as their owners, queues numbered notifications, and
//!   delivers them over rest-hook and websocket channels.
//! - [`topics`]: the subscription topics the server offers (the workflows' events).

pub mod outbox;
pub mod stream;
pub mod subscriptions;
pub mod topics;

use std::sync::Arc;

use crate::store::Store;

/// How the event machinery is configured (`serve` flags).
#[derive(Debug, Clone, Default)]
pub struct EventsConfig {
    /// NATS server for the event stream (`nats://host:4222`); `None`: no stream.
    pub nats_url: Option<String>,
    /// Subject prefix and JetStream stream name of the event stream.
    pub nats_stream: String,
    /// Consecutive failed deliveries after which a rest-hook Subscription is set to `error`.
    pub max_delivery_failures: i32,
    /// How long delivered notifications are kept for `$events`.
    pub notification_retention: chrono::Duration,
}

/// The running event machinery of one server instance: what request handlers need to reach
/// (the websocket hub, the delivery wake-up).
pub struct Events {
    /// This instance's id in outbox and delivery leases.
    pub instance: uuid::Uuid,
    /// Websocket connections bound to Subscriptions on this instance.
    pub hub: Arc<subscriptions::websocket::Hub>,
}

/// Starts the dispatchers (subscriptions always, the NATS stream when configured), the
/// rest-hook delivery and the websocket notifier. `base` is the server's FHIR base URL (for
/// references in notifications; derived per request when empty).
pub async fn start(
    store: Store,
    grants: Arc<crate::access::RoleGrants>,
    trail: crate::audit::trail::AuditTrail,
    base: String,
    config: EventsConfig,
) -> Result<Arc<Events>, String> {
    let instance = uuid::Uuid::new_v4();
    let wake = outbox::listen(store.clone()).await;
    let hub = Arc::new(subscriptions::websocket::Hub::default());
    let delivered = subscriptions::delivery::listen(store.clone()).await;
    let matcher = Arc::new(subscriptions::matching::Matcher::new(store.clone(), grants.clone(), base.clone()));
    outbox::spawn(store.clone(), matcher, wake.clone(), instance);
    if let Some(url) = &config.nats_url {
        let sink = stream::NatsSink::connect(url, &config.nats_stream).await?;
        outbox::register(&store, stream::CONSUMER).await.map_err(|e| format!("cannot register the event stream: {e}"))?;
        outbox::spawn(store.clone(), Arc::new(stream::StreamConsumer::new(Arc::new(sink))), wake.clone(), instance);
    }
    let delivery_grants = grants.clone();
    let notifier_trail = trail.clone();
    let delivery = subscriptions::delivery::Delivery {
        store: store.clone(),
        grants,
        trail,
        base,
        instance,
        max_failures: config.max_delivery_failures.max(1),
        retention: config.notification_retention,
    };
    subscriptions::delivery::spawn(Arc::new(delivery), delivered.clone());
    subscriptions::websocket::spawn_notifier(store, hub.clone(), delivery_grants, notifier_trail, delivered);
    Ok(Arc::new(Events { instance, hub }))
}
