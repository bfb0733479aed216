/* The dispatcher. */
CREATE FUNCTION twilio_outbox.start_worker() RETURNS integer
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_start_worker';
COMMENT ON FUNCTION twilio_outbox.start_worker() IS 'Start this database''s dispatcher unless it runs; returns its pid';

CREATE FUNCTION twilio_outbox.stop_worker() RETURNS boolean
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_stop_worker';
COMMENT ON FUNCTION twilio_outbox.stop_worker() IS 'Stop this database''s dispatcher and wait for it to exit; false if none ran';

CREATE FUNCTION twilio_outbox.worker_pid() RETURNS integer
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_worker_pid';
COMMENT ON FUNCTION twilio_outbox.worker_pid() IS 'The pid of this database''s dispatcher, NULL if none runs';

