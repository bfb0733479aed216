-- Failover (issue 11): the setting twilio_outbox.failover_window and the
-- table twilio_outbox.failover.  (Promotions themselves are a TAP test:
-- test/t/029_failover.pl.)
-- Its own database and fixtures: this file depends on no other.
\set db outbox_failover
\i test/sql/include/fresh_database.sql

-- The window: 5 minutes by default, 0 to 7 days, reloaded (not per session).
SHOW twilio_outbox.failover_window;
-- (ALTER SYSTEM cannot run in try()'s function: each is refused before it
-- writes anything)
ALTER SYSTEM SET twilio_outbox.failover_window = '-1s';
ALTER SYSTEM SET twilio_outbox.failover_window = '8d';
ALTER SYSTEM SET twilio_outbox.failover_window = 'soon';
SELECT try($$SET twilio_outbox.failover_window = 0$$) AS per_session;
SHOW twilio_outbox.failover_window;

-- One row; no dispatcher has run in this database, so no timeline yet.
SELECT singleton, timeline, promotion_timeline, promotion_cutoff, promotion_window,
       promotion_marked, promotions, last_promotion_at, last_promotion_marked
FROM twilio_outbox.failover;
SELECT try(sql) AS result, sql FROM (VALUES
	($$INSERT INTO twilio_outbox.failover DEFAULT VALUES$$),
	($$INSERT INTO twilio_outbox.failover (singleton) VALUES (false)$$),
	($$UPDATE twilio_outbox.failover SET timeline = 0$$),
	($$UPDATE twilio_outbox.failover SET promotion_timeline = 2$$),
	($$UPDATE twilio_outbox.failover SET promotion_timeline = 2, promotion_cutoff = now()$$)
) AS t(sql);
SELECT count(*) AS rows FROM twilio_outbox.failover;

-- The monitoring role reads it; the application and admin roles write nothing.
SELECT has_table_privilege('twilio_outbox_monitor', 'twilio_outbox.failover', 'SELECT') AS monitor_reads,
       has_table_privilege('twilio_outbox_admin', 'twilio_outbox.failover', 'SELECT') AS admin_reads,
       has_table_privilege('twilio_outbox_admin', 'twilio_outbox.failover', 'UPDATE') AS admin_updates,
       has_table_privilege('twilio_outbox_enqueue', 'twilio_outbox.failover', 'SELECT') AS app_reads;
