-- Uploaded documents (src/documents/objects.rs): one row per object the document store holds
-- for a Binary, from the moment an upload is asked for. The row, not the Binary's extension,
-- is what binds an object to its Binary: a client cannot point a Binary at another's object.
CREATE TABLE document_object (
    key           text PRIMARY KEY,           -- the store key, binary/<uuid>
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    -- pending: URL handed out, not completed; stored: verified and recorded in the Binary;
    -- sweeping: claimed by the orphan sweeper (claimed_at), being deleted from the store.
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'stored', 'sweeping')),
    content_type  text NOT NULL,
    size          bigint NOT NULL CHECK (size >= 0),  -- the declared (exact) length
    sha1          bytea CHECK (sha1 IS NULL OR length(sha1) = 20),  -- declared, then verified
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    claimed_at    timestamptz
);

-- The orphan sweeper: uploads not completed, oldest first (and sweeps a stopped server left).
CREATE INDEX document_object_unfinished ON document_object (created_at) WHERE state <> 'stored';
-- Raw reads and completion: the objects of one Binary.
CREATE INDEX document_object_resource ON document_object (resource_type, resource_id);
