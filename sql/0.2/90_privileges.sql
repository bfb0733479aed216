/* grants */

/* H2: account_roles, clip_input, the purge batch functions. */
REVOKE ALL ON twilio_outbox.account_roles FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON twilio_outbox.account_roles TO twilio_outbox_admin;
GRANT SELECT ON twilio_outbox.account_roles TO twilio_outbox_monitor;
REVOKE ALL ON FUNCTION twilio_outbox.clip_input(text),
	twilio_outbox.account_roles_changed(),
	twilio_outbox.purge_cutoff(interval),
	twilio_outbox.purge_messages_batch(timestamptz, integer),
	twilio_outbox.purge_attempts_batch(timestamptz, integer),
	twilio_outbox.purge_status_events_batch(timestamptz, integer)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION twilio_outbox.clip_input(text) TO twilio_outbox_admin, twilio_outbox_monitor;
GRANT EXECUTE ON FUNCTION twilio_outbox.purge_cutoff(interval),
	twilio_outbox.purge_messages_batch(timestamptz, integer),
	twilio_outbox.purge_attempts_batch(timestamptz, integer),
	twilio_outbox.purge_status_events_batch(timestamptz, integer)
	TO twilio_outbox_admin;
