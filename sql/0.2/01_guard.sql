/*
 * First of all, before any piece references a C symbol new in 0.2: the
 * library this server runs must be 0.2.
 */
SET LOCAL search_path = pg_catalog, pg_temp;

/*
 * A preloaded library is replaced only by a server restart.  Under a 0.1
 * library still loaded, this upgrade's C functions would be answered by
 * the old code: refuse, saying what to do.  (The symbol is new in 0.2.)
 */
DO $library$
BEGIN
	CREATE FUNCTION twilio_outbox.library_version() RETURNS text
	LANGUAGE c STRICT
	AS 'MODULE_PATHNAME', 'twilio_outbox_library_version';
EXCEPTION WHEN undefined_function THEN
	RAISE EXCEPTION 'the server still runs an older twilio_outbox library'
		USING ERRCODE = 'object_not_in_prerequisite_state',
			  DETAIL = 'A library in shared_preload_libraries is replaced only by a server restart.',
			  HINT = 'Restart the server, then run ALTER EXTENSION twilio_outbox UPDATE again.';
END
$library$;
COMMENT ON FUNCTION twilio_outbox.library_version() IS 'The version of the twilio_outbox library this session (and a dispatcher started now) runs';
