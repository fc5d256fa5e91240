-- PostgreSQL twin of ../0003_send_retry.sql (same number and name; see docs/design/postgres.md §3).
-- Delivery retries: a reply whose send failed for a passing reason (the channel is still
-- connecting, a timeout) stays 'pending' with the attempts so far and when to try again.
ALTER TABLE messages ADD COLUMN send_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN next_attempt_at DOUBLE PRECISION;

-- Pairing: when the code was sent to the sender again (once, after a while).
ALTER TABLE pairing_requests ADD COLUMN reminded_at DOUBLE PRECISION;
