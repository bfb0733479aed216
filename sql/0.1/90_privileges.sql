/* Privileges: nothing for PUBLIC, then each role what it needs. */
REVOKE ALL ON ALL TABLES IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb)
	TO twilio_outbox_enqueue, twilio_outbox_admin;

GRANT SELECT ON twilio_outbox.accounts, twilio_outbox.senders, twilio_outbox.attempts,
	twilio_outbox.dead_letters, twilio_outbox.error_policy,
	twilio_outbox.suppressed_recipients, twilio_outbox.status_events
	TO twilio_outbox_monitor;
/* Message contents (one-time codes, personal data) are not for monitoring. */
GRANT SELECT (id, account, sender_id, to_number, from_number, messaging_service_sid,
	encoding, segments, dedupe_key, state, attempts, failures, ambiguous_attempts,
	send_after, expires_at, next_attempt_at, lease_until, worker_pid, twilio_sid,
	twilio_status, twilio_segments, last_http_status, last_error_code,
	last_error_message, enqueued_by, created_at, updated_at, sent_at, finished_at)
	ON twilio_outbox.messages TO twilio_outbox_monitor;

GRANT SELECT, INSERT, UPDATE, DELETE ON twilio_outbox.accounts, twilio_outbox.senders,
	twilio_outbox.error_policy, twilio_outbox.suppressed_recipients,
	twilio_outbox.messages, twilio_outbox.dead_letters
	TO twilio_outbox_admin;
GRANT DELETE ON twilio_outbox.attempts, twilio_outbox.status_events TO twilio_outbox_admin;
GRANT INSERT, UPDATE, DELETE ON twilio_outbox.account_credentials TO twilio_outbox_admin;
GRANT SELECT (account, api_key_sid, secret_env, secret_file, updated_at) ON twilio_outbox.account_credentials TO twilio_outbox_admin;
GRANT EXECUTE ON FUNCTION twilio_outbox.start_worker(), twilio_outbox.stop_worker(),
	twilio_outbox.worker_pid(), twilio_outbox.wake_worker(),
	twilio_outbox.schedule_supervisor(text, text),
	twilio_outbox.pause_account(text, timestamptz, text),
	twilio_outbox.resume_account(text)
	TO twilio_outbox_admin;
GRANT EXECUTE ON FUNCTION twilio_outbox.worker_pid(), twilio_outbox.worker_status(),
	twilio_outbox.worker_accounts()
	TO twilio_outbox_monitor;
GRANT SELECT ON twilio_outbox.backlog, twilio_outbox.dead_letter_queue, twilio_outbox.attempt_log,
	twilio_outbox.stats, twilio_outbox.health, twilio_outbox.worker,
	twilio_outbox.worker_accounts
	TO twilio_outbox_monitor;
GRANT EXECUTE ON FUNCTION twilio_outbox.pause_sender(bigint, timestamptz, text),
	twilio_outbox.resume_sender(bigint), twilio_outbox.cancel(bigint),
	twilio_outbox.requeue(bigint[], integer, text, text, timestamptz, timestamptz),
	twilio_outbox.resolve_ambiguous(bigint, text),
	twilio_outbox.schedule_purge(interval, text, text, text)
	TO twilio_outbox_admin;
GRANT EXECUTE ON PROCEDURE twilio_outbox.purge(interval, integer) TO twilio_outbox_admin;
