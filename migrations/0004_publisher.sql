-- The NATS publisher's checkpoint: the position of the last event whose
-- JetStream ack it has seen (infra/src/publisher.rs). It sits with the
-- projections' rows so that its lag shows in /ops/projections.
INSERT INTO projection_checkpoints (name) VALUES ('publisher') ON CONFLICT (name) DO NOTHING;
