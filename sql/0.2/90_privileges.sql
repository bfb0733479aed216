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
