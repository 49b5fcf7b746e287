-- Issue #19: one event (order.placed) may carry several credit movements of one order (the
-- grant, the reservation, the capture), each its own entry at that event's sequence: an entry
-- is keyed by its sequence and its kind.
ALTER TABLE credit_entries DROP CONSTRAINT credit_entries_pkey;
ALTER TABLE credit_entries ADD PRIMARY KEY (seq, kind);
