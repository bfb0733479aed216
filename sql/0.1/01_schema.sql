/*
 * Resolve every operator and type of this script in pg_catalog only; the
 * extension's own objects are always named with their schema.  SET LOCAL:
 * CREATE EXTENSION restores the caller's search_path when the script ends.
 */
SET LOCAL search_path = pg_catalog, pg_temp;

/*
 * Roles are cluster-wide, so they may already exist from another database.
 * twilio_outbox_enqueue: may call twilio_enqueue() and nothing else of note.
 * twilio_outbox_monitor: may read the tables and views, never a credential.
 * twilio_outbox_admin:   operates the outbox (accounts, senders, policy,
 *                        worker), writes credentials but cannot read them.
 */
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'twilio_outbox_enqueue') THEN
		CREATE ROLE twilio_outbox_enqueue NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'twilio_outbox_monitor') THEN
		CREATE ROLE twilio_outbox_monitor NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'twilio_outbox_admin') THEN
		CREATE ROLE twilio_outbox_admin NOLOGIN;
	END IF;
END
$roles$;
GRANT twilio_outbox_monitor TO twilio_outbox_admin;

CREATE SCHEMA twilio_outbox;
REVOKE ALL ON SCHEMA twilio_outbox FROM PUBLIC;
GRANT USAGE ON SCHEMA twilio_outbox TO twilio_outbox_monitor, twilio_outbox_admin;
COMMENT ON SCHEMA twilio_outbox IS 'Transactional outbox for Twilio messages';

