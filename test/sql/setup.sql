-- Shared by the pg_regress suite (the tests run in this order, in one
-- database): the extension, and try(sql), which runs a statement and
-- returns 'ok' or the SQLSTATE and message of its error.
CREATE EXTENSION twilio_outbox;
CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
