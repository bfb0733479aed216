-- A database of the including file's own, named by :db, created afresh
-- with the extension, and try(sql): 'ok', or the SQLSTATE and message of
-- the statement's error.  Each regress file includes it (\i, from the top
-- of the tree), so that each runs alone.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS :"db";
CREATE DATABASE :"db";
\c :"db"
SET client_min_messages = warning;
CREATE EXTENSION twilio_outbox;
CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
RESET client_min_messages;
