-- Where each delivery's event sits in its domain stream. The sender claims a row only when every
-- earlier message of that stream has been taken in (the intake consumer's ack floor has reached
-- it): after a crash the crashed intake's unacknowledged message comes back only after the ack
-- wait, while later events of the same aggregate flow at once, and would otherwise go out first.
-- Rows from before this column are claimable as before (NULL).
ALTER TABLE webhook_deliveries ADD COLUMN domain text, ADD COLUMN stream_sequence bigint;
