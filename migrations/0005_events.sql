-- Events (src/events): the transactional outbox, its consumers' leases, and the state of
-- Subscriptions (notifications numbered per subscription, kept for $events catch-up).

-- Who reads the outbox. 'subscriptions' always; 'stream' (NATS JetStream) is registered by a
-- server started with --nats-url, and from then on every write queues a row for it too.
CREATE TABLE outbox_consumer (
    name          text        PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO outbox_consumer (name) VALUES ('subscriptions');

-- One row per consumer per committed resource version, inserted by the trigger on
-- resource_history (outbox_capture, migrations/functions/events.sql) in the writing
-- transaction, deleted by the consumer in the transaction that handles it. Rows of one
-- resource share a partition, and a partition is handled by one instance at a time in
-- event_id order, so each resource's events leave in the order they were written.
CREATE TABLE outbox_event (
    event_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer      text        NOT NULL REFERENCES outbox_consumer (name) ON DELETE CASCADE,
    partition     smallint    NOT NULL,
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    bigint      NOT NULL,
    -- create, update or delete
    interaction   text        NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_event_next ON outbox_event (consumer, partition, event_id);

-- Leases: which server instance handles a consumer's partition until when (several instances
-- on one database take partitions with FOR UPDATE SKIP LOCKED; a dead instance's lease runs out).
CREATE TABLE outbox_lease (
    consumer   text        NOT NULL REFERENCES outbox_consumer (name) ON DELETE CASCADE,
    partition  smallint    NOT NULL,
    holder     uuid,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (consumer, partition)
);
INSERT INTO outbox_lease (consumer, partition) SELECT 'subscriptions', p FROM generate_series(0, 15) p;

CREATE TRIGGER outbox_capture AFTER INSERT ON resource_history
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION outbox_capture();

-- Who a Subscription notifies as: the claims of the token that last wrote it. Criteria are
-- evaluated, and full-resource payloads read, as this principal (never more than it can see).
CREATE TABLE subscription_owner (
    subscription_id text        PRIMARY KEY,
    subject         text        NOT NULL,
    client_id       text,
    patient         text,
    fhir_user       text,
    role            text,
    scope           text        NOT NULL,
    -- The FHIR base the writing request used: notifications reference resources against it
    -- when the server has no --base-url.
    base            text        NOT NULL DEFAULT '',
    written_at      timestamptz NOT NULL DEFAULT now()
);

-- Per Subscription: the event counter (events-since-subscription-start, gapless: bumped in
-- the transaction that queues the notification) and delivery health.
CREATE TABLE subscription_state (
    subscription_id text        PRIMARY KEY,
    -- rest-hook (delivered by the instance leasing the row) or websocket (by the instances
    -- holding bound sockets).
    channel         text        NOT NULL,
    events_since_start bigint   NOT NULL DEFAULT 0,
    -- Consecutive failed deliveries of the oldest pending notification.
    failures        integer     NOT NULL DEFAULT 0,
    last_error      text,
    last_delivered  bigint      NOT NULL DEFAULT 0,
    -- While a delivery is in flight: the instance and until when.
    holder          uuid,
    lease_until     timestamptz NOT NULL DEFAULT '-infinity'
);

-- Notifications in event-number order per Subscription: pending (delivered_at NULL) for
-- rest-hook delivery, kept after delivery for $events (pruned after a retention time).
CREATE TABLE subscription_notification (
    subscription_id text        NOT NULL,
    event_number    bigint      NOT NULL,
    -- event-notification or handshake
    kind            text        NOT NULL,
    focus_type      text,
    focus_id        text,
    focus_version   bigint,
    interaction     text,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    delivered_at    timestamptz,
    PRIMARY KEY (subscription_id, event_number)
);
CREATE INDEX subscription_notification_pending ON subscription_notification (next_attempt_at) WHERE delivered_at IS NULL;

-- Websocket binding tokens ($get-ws-binding-token): a short-lived secret standing for the
-- caller's right to watch one Subscription; only its hash is kept.
CREATE TABLE subscription_ws_token (
    token_hash      bytea       PRIMARY KEY,
    subscription_id text        NOT NULL,
    expires_at      timestamptz NOT NULL
);
