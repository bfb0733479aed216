/* grants */

/*
 * The dispatcher's functions and views: new functions are executable
 * by PUBLIC until revoked; dropped and created views lost their grants.
 */
REVOKE ALL ON FUNCTION twilio_outbox.start_worker(boolean), twilio_outbox.stop_worker(interval),
	twilio_outbox.cron_job_name(text, text, text), twilio_outbox.check_cron_schedule(text),
	twilio_outbox.cron_schedule(text, text, text, text, text, text),
	twilio_outbox.schedule_supervisor_sql(text, text),
	twilio_outbox.schedule_purge_sql(interval, text, text, text),
	twilio_outbox.worker_status(), twilio_outbox.worker_accounts(),
	twilio_outbox.supervisor_last_run(), twilio_outbox.cron_database_name(),
	twilio_outbox.library_version()
	FROM PUBLIC;
REVOKE ALL ON twilio_outbox.health, twilio_outbox.worker, twilio_outbox.worker_accounts FROM PUBLIC;
GRANT EXECUTE ON FUNCTION twilio_outbox.start_worker(boolean), twilio_outbox.stop_worker(interval),
	twilio_outbox.cron_job_name(text, text, text), twilio_outbox.check_cron_schedule(text),
	twilio_outbox.schedule_supervisor_sql(text, text),
	twilio_outbox.schedule_purge_sql(interval, text, text, text)
	TO twilio_outbox_admin;
GRANT EXECUTE ON FUNCTION twilio_outbox.worker_status(), twilio_outbox.worker_accounts(),
	twilio_outbox.supervisor_last_run(), twilio_outbox.cron_database_name(),
	twilio_outbox.library_version()
	TO twilio_outbox_monitor;
GRANT SELECT ON twilio_outbox.health, twilio_outbox.worker, twilio_outbox.worker_accounts
	TO twilio_outbox_monitor;


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


/*
 * H7: webhooks (35_callbacks.sql).  twilio_outbox_webhook may call the
 * receive_* functions (SECURITY DEFINER) and nothing else; webhook_verify
 * reads credentials and is executable by no role.  The admin role may
 * name the validation token (never read an inline one back).
 */
GRANT USAGE ON SCHEMA twilio_outbox TO twilio_outbox_webhook;
REVOKE ALL ON FUNCTION twilio_outbox.webhook_verify(text, text, text, text[]),
	twilio_outbox.webhook_signature(text, text, text),
	twilio_outbox.webhook_counters(),
	twilio_outbox.suppress_recipient(text, text, text, integer, bigint),
	twilio_outbox.receive_status(text, text, text),
	twilio_outbox.receive_inbound(text, text, text),
	twilio_outbox.status_rank(text),
	twilio_outbox.status_callback_for(text, text, bigint)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION twilio_outbox.receive_status(text, text, text),
	twilio_outbox.receive_inbound(text, text, text)
	TO twilio_outbox_webhook, twilio_outbox_admin;
GRANT EXECUTE ON FUNCTION twilio_outbox.webhook_counters(), twilio_outbox.status_rank(text)
	TO twilio_outbox_monitor;
GRANT EXECUTE ON FUNCTION twilio_outbox.webhook_signature(text, text, text)
	TO twilio_outbox_admin;
GRANT SELECT (auth_token_env, auth_token_file) ON twilio_outbox.account_credentials TO twilio_outbox_admin;
REVOKE ALL ON FUNCTION twilio_outbox.receive_debugger(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION twilio_outbox.receive_debugger(text, text, text)
	TO twilio_outbox_webhook, twilio_outbox_admin;
REVOKE ALL ON twilio_outbox.debugger_events, twilio_outbox.twilio_errors FROM PUBLIC;
REVOKE ALL ON SEQUENCE twilio_outbox.debugger_events_id_seq FROM PUBLIC;
GRANT SELECT ON twilio_outbox.debugger_events, twilio_outbox.twilio_errors TO twilio_outbox_monitor;
GRANT DELETE ON twilio_outbox.debugger_events TO twilio_outbox_admin;

/* Keys Citus could distribute (12_distribution.sql): the operator functions that replace cascades and the sender trigger. */
REVOKE ALL ON FUNCTION twilio_outbox.rename_account(text, text), twilio_outbox.delete_sender(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION twilio_outbox.rename_account(text, text), twilio_outbox.delete_sender(bigint)
	TO twilio_outbox_admin;

/*
 * H3: lookups and deletions at Twilio (36_lookups.sql).  apply_status is
 * called by receive_status and the dispatcher only.
 */
REVOKE ALL ON FUNCTION twilio_outbox.apply_status(text, text, text, text, integer, text, bigint, jsonb, text, boolean),
	twilio_outbox.apply_event(bigint, text, text, text, integer, text, bigint, boolean),
	twilio_outbox.apply_early_statuses(timestamptz, text[]),
	twilio_outbox.apply_early_statuses_of(bigint),
	twilio_outbox.early_status_lock(),
	twilio_outbox.in_delete_window(time, time, timestamptz)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION twilio_outbox.in_delete_window(time, time, timestamptz)
	TO twilio_outbox_monitor, twilio_outbox_admin;
GRANT EXECUTE ON FUNCTION twilio_outbox.apply_early_statuses_of(bigint) TO twilio_outbox_admin;
REVOKE ALL ON twilio_outbox.lookups FROM PUBLIC;
GRANT SELECT ON twilio_outbox.lookups TO twilio_outbox_monitor;
GRANT SELECT (polls, next_lookup_at, lookup_error, deleted_at_twilio)
	ON twilio_outbox.messages TO twilio_outbox_monitor;

/*
 * H2: the metrics view, for twilio_outbox_metrics (and through it the
 * monitoring role).  Functions a view calls are checked against the
 * caller: the exporter's role may run those the view runs, all read-only.
 */
REVOKE ALL ON twilio_outbox.metrics FROM PUBLIC;
GRANT USAGE ON SCHEMA twilio_outbox TO twilio_outbox_metrics;
GRANT SELECT ON twilio_outbox.metrics TO twilio_outbox_metrics;
GRANT EXECUTE ON FUNCTION twilio_outbox.worker_status(), twilio_outbox.worker_accounts(),
	twilio_outbox.webhook_counters(), twilio_outbox.supervisor_last_run(),
	twilio_outbox.cron_database_name()
	TO twilio_outbox_metrics;

/* H6: each dispatcher of the database, for the monitor. */
REVOKE ALL ON FUNCTION twilio_outbox.worker_dispatchers() FROM PUBLIC;
REVOKE ALL ON twilio_outbox.worker_dispatchers FROM PUBLIC;
GRANT EXECUTE ON FUNCTION twilio_outbox.worker_dispatchers() TO twilio_outbox_monitor;
GRANT SELECT ON twilio_outbox.worker_dispatchers TO twilio_outbox_monitor;

/* twilio_enqueue was replaced (20_enqueue.sql): its grants again */
REVOKE ALL ON FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb, text, text, text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb, text, text, text, text, jsonb)
	TO twilio_outbox_enqueue, twilio_outbox_admin;

/* H2 (issue 11): the ambiguous backlog and the reconciliation columns, for the monitor. */
REVOKE ALL ON twilio_outbox.ambiguous_messages FROM PUBLIC;
GRANT SELECT ON twilio_outbox.ambiguous_messages TO twilio_outbox_monitor;
GRANT SELECT (ambiguous_since, reconcile_at, reconcile_lookups, reconcile_candidates)
	ON twilio_outbox.messages TO twilio_outbox_monitor;
/*
 * H7: fallback chains (45_fallback.sql).  Their functions are internal
 * (twilio_enqueue, the dispatcher and apply_status call them as the owner);
 * the chain views carry no content and are for whoever reads outcomes.
 */
REVOKE ALL ON FUNCTION twilio_outbox.chain_check(text, bigint, text, text, jsonb),
	twilio_outbox.chain_escalate(text, bigint, text),
	twilio_outbox.chain_delivered(text, bigint)
	FROM PUBLIC;
REVOKE ALL ON twilio_outbox.chain_steps, twilio_outbox.chains FROM PUBLIC;
GRANT SELECT ON twilio_outbox.chain_steps, twilio_outbox.chains TO twilio_outbox_monitor;
GRANT SELECT (channel, chain_head, chain_step, fallback_at) ON twilio_outbox.messages TO twilio_outbox_monitor;
/* H6 (43_limits): each sender's effective rate, and the pool arithmetic behind it. */
REVOKE ALL ON twilio_outbox.sender_rates FROM PUBLIC;
REVOKE ALL ON FUNCTION twilio_outbox.pool_rate(integer, integer, integer) FROM PUBLIC;
GRANT SELECT ON twilio_outbox.sender_rates TO twilio_outbox_monitor;
GRANT EXECUTE ON FUNCTION twilio_outbox.pool_rate(integer, integer, integer) TO twilio_outbox_monitor;

/*
 * H5: quiet hours and guards (42_guards.sql).  The tables are the admin's
 * to edit and the monitor's to read; the functions are for both (the
 * anomaly check reads messages' account, to_number and created_at, which
 * the monitor role may read).
 */
REVOKE ALL ON twilio_outbox.number_time_zones, twilio_outbox.recipient_counts FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON twilio_outbox.number_time_zones,
	twilio_outbox.recipient_counts TO twilio_outbox_admin;
GRANT SELECT ON twilio_outbox.number_time_zones, twilio_outbox.recipient_counts
	TO twilio_outbox_monitor;
REVOKE ALL ON FUNCTION twilio_outbox.time_zone_known(text), twilio_outbox.time_zone_name(text),
	twilio_outbox.quiet_until(text, time, time, timestamptz),
	twilio_outbox.calling_codes_valid(text[]), twilio_outbox.calling_code(text),
	twilio_outbox.purge_recipient_counts(), twilio_outbox.anomalies()
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION twilio_outbox.time_zone_known(text), twilio_outbox.time_zone_name(text),
	twilio_outbox.quiet_until(text, time, time, timestamptz),
	twilio_outbox.calling_codes_valid(text[]), twilio_outbox.calling_code(text),
	twilio_outbox.anomalies()
	TO twilio_outbox_admin, twilio_outbox_monitor;
GRANT EXECUTE ON FUNCTION twilio_outbox.purge_recipient_counts() TO twilio_outbox_admin;
/* the health view calls it, and the metrics view reads the health view */
GRANT EXECUTE ON FUNCTION twilio_outbox.anomalies() TO twilio_outbox_metrics;

/* H1 (47_row_versions.sql): first attempts kept on their messages are attempt data, not content */
GRANT SELECT ON twilio_outbox.attempt_rows TO twilio_outbox_monitor;
GRANT SELECT (first_started_at, first_duration_ms, first_http_status, first_request_id,
	first_concurrent_requests, first_request_duration, first_worker_pid)
	ON twilio_outbox.messages TO twilio_outbox_monitor;
