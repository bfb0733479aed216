-- pg_cron supervision from a database without pg_cron: a clear refusal
-- that says what to run where.  (Scheduling itself is a TAP test.)
CREATE EXTENSION IF NOT EXISTS twilio_outbox;
SELECT twilio_outbox.schedule_supervisor();
SELECT twilio_outbox.schedule_supervisor(database => 'app', job_name => 'app_supervisor');
-- No dispatcher runs here.
SELECT twilio_outbox.worker_pid() IS NULL AS no_worker;
