-- Priorities and traffic classes at enqueue (issue 12): the levels, the
-- defaults that keep 0.1's behaviour, the errors, and the claim's index.
-- Its own database and fixtures: this file depends on no other.
\set db outbox_priorities
\i test/sql/include/fresh_database.sql

INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC0123456789abcdef0123456789abcdef', true);
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true);
-- Quiet hours are quiet_hours.sql's subject: off here, so that what is due
-- does not depend on the time of day in the recipients' zone.
UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL;

-- A 0.1 call (positional and by name) gets priority normal, transactional.
SELECT twilio_enqueue('+14155552671', 'positional') IS NOT NULL AS queued;
SELECT twilio_enqueue(to_number => '+14155552672', body => 'by name') IS NOT NULL AS queued;
-- Each level and class by name; NULL is the default.
SELECT twilio_enqueue('+14155552673', 'code', priority => 'high') IS NOT NULL AS queued;
SELECT twilio_enqueue('+14155552674', 'promo', priority => 'low', traffic_class => 'marketing') IS NOT NULL AS queued;
SELECT twilio_enqueue('+14155552675', 'receipt', priority => 'normal', traffic_class => 'transactional') IS NOT NULL AS queued;
SELECT twilio_enqueue('+14155552676', 'nulls', priority => NULL, traffic_class => NULL) IS NOT NULL AS queued;
SELECT to_number, body, priority, twilio_outbox.priority_name(priority), traffic_class
FROM twilio_outbox.messages ORDER BY id;

-- Bad values: 22023, nothing inserted.
SELECT try($$SELECT twilio_enqueue('+14155552677', 'x', priority => 'urgent')$$);
SELECT try($$SELECT twilio_enqueue('+14155552677', 'x', priority => 'HIGH')$$);
SELECT try($$SELECT twilio_enqueue('+14155552677', 'x', priority => '')$$);
SELECT try($$SELECT twilio_enqueue('+14155552677', 'x', traffic_class => 'promotional')$$);
SELECT try($$SELECT twilio_enqueue('+14155552677', 'x', traffic_class => '')$$);
SELECT try($$SELECT twilio_enqueue('+14155552677', 'x', priority => repeat('z', 200))$$);
SELECT count(*) FROM twilio_outbox.messages WHERE to_number = '+14155552677';

-- The table refuses what the function never writes.
SELECT try($$UPDATE twilio_outbox.messages SET priority = 3 WHERE body = 'code'$$);
SELECT try($$UPDATE twilio_outbox.messages SET priority = -1 WHERE body = 'code'$$);
SELECT try($$UPDATE twilio_outbox.messages SET traffic_class = 'spam' WHERE body = 'code'$$);

-- The claim's index: by account, sender, level, then due time.
SELECT pg_get_indexdef('twilio_outbox.messages_due'::regclass);

-- With 2,000 low-priority messages due an hour before the others, a
-- per-level scan in the claim's shape (src/queue.c; the dispatcher itself
-- is tested in test/t/030_priorities.pl) still returns the high one first,
-- then the normal ones oldest first.
INSERT INTO twilio_outbox.messages (account, sender_id, to_number, body, idempotency_key,
	next_attempt_at, priority, traffic_class, segments, encoding)
SELECT 'main', s.id, '+1415555' || lpad(g::text, 4, '0'), 'bulk', gen_random_uuid(),
	now() - interval '1 hour', 2, 'marketing', 1, 'GSM'
FROM twilio_outbox.senders s, generate_series(1, 2000) g;
ANALYZE twilio_outbox.messages;
SELECT l.body, twilio_outbox.priority_name(l.priority)
FROM twilio_outbox.senders s
CROSS JOIN LATERAL (
	SELECT l.* FROM unnest('{0,1,2}'::int2[]) AS lv(level)
	CROSS JOIN LATERAL (SELECT m.id, m.body, m.priority, m.next_attempt_at
		FROM twilio_outbox.messages m
		WHERE m.state = 'queued' AND m.account = 'main' AND m.sender_id = s.id
		AND m.priority = lv.level AND m.next_attempt_at <= now()
		ORDER BY m.next_attempt_at, m.id LIMIT 3) l
	ORDER BY l.priority, l.next_attempt_at, l.id LIMIT 3) l;
