/* keys a sharding extension (Citus) can distribute by account */

/*
 * Every primary key and unique index of the tables that grow with traffic
 * includes the account, so that the outbox can be distributed by account
 * (messages, attempts, dead letters and status events co-located), with
 * accounts, senders and error_policy as reference tables.  Ids stay
 * identity columns and stay unique in practice; the id leads each key, so
 * a lookup by id alone still uses it.
 */
ALTER TABLE twilio_outbox.messages DROP CONSTRAINT messages_pkey;
ALTER TABLE twilio_outbox.messages ADD CONSTRAINT messages_pkey PRIMARY KEY (id, account);
ALTER TABLE twilio_outbox.attempts DROP CONSTRAINT attempts_pkey;
ALTER TABLE twilio_outbox.attempts ADD CONSTRAINT attempts_pkey PRIMARY KEY (id, account);
ALTER TABLE twilio_outbox.dead_letters DROP CONSTRAINT dead_letters_pkey;
ALTER TABLE twilio_outbox.dead_letters ADD CONSTRAINT dead_letters_pkey PRIMARY KEY (id, account);

/*
 * The dispatcher's paths are per account (each of its statements names one
 * account), so their partial indexes lead with it.
 */
DROP INDEX twilio_outbox.messages_due;
CREATE INDEX messages_due ON twilio_outbox.messages (account, sender_id, next_attempt_at, id)
	WHERE state OPERATOR(pg_catalog.=) 'queued';
DROP INDEX twilio_outbox.messages_expiring;
CREATE INDEX messages_expiring ON twilio_outbox.messages (account, expires_at)
	WHERE state OPERATOR(pg_catalog.=) 'queued' AND expires_at IS NOT NULL;
DROP INDEX twilio_outbox.messages_in_flight;
CREATE INDEX messages_in_flight ON twilio_outbox.messages (account, lease_until)
	WHERE state OPERATOR(pg_catalog.=) 'sending';

/*
 * Keys referring to an account do not cascade a rename (a sharding
 * extension cannot cascade an update of the distribution column):
 * rename_account() moves everything instead.  Deleting an account still
 * deletes its credentials and suppressions.
 */
ALTER TABLE twilio_outbox.senders DROP CONSTRAINT senders_account_fkey;
ALTER TABLE twilio_outbox.senders ADD CONSTRAINT senders_account_fkey
	FOREIGN KEY (account) REFERENCES twilio_outbox.accounts (name);
ALTER TABLE twilio_outbox.account_credentials DROP CONSTRAINT account_credentials_account_fkey;
ALTER TABLE twilio_outbox.account_credentials ADD CONSTRAINT account_credentials_account_fkey
	FOREIGN KEY (account) REFERENCES twilio_outbox.accounts (name) ON DELETE CASCADE;
ALTER TABLE twilio_outbox.suppressed_recipients DROP CONSTRAINT suppressed_recipients_account_fkey;
ALTER TABLE twilio_outbox.suppressed_recipients ADD CONSTRAINT suppressed_recipients_account_fkey
	FOREIGN KEY (account) REFERENCES twilio_outbox.accounts (name) ON DELETE CASCADE;

/*
 * No trigger on senders (a reference table): deleting a sender that live
 * messages still name is allowed, and those messages are dead-lettered as
 * sender_missing by the dispatcher (requeue() them once they have a sender
 * again).  delete_sender() is the guarded way.
 */
DROP TRIGGER senders_guard_delete ON twilio_outbox.senders;
DROP FUNCTION twilio_outbox.senders_guard_delete();

/*
 * rename_account(old, new): what ON UPDATE CASCADE did, done by hand.  The
 * account row is copied under the new name, its senders, credentials,
 * suppressions, role grants and messages are moved, and the old row is
 * deleted; attempts, dead letters and events keep the name they were
 * recorded under.  Refused while a message of the account is in flight
 * (its outcome is recorded under the name it was claimed with): the
 * messages are moved first, which waits for any claim holding them.
 */
CREATE FUNCTION twilio_outbox.rename_account(old_name text, new_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	was_default boolean;
BEGIN
	IF old_name IS NULL OR new_name IS NULL THEN
		RAISE EXCEPTION 'account names must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT a.is_default INTO was_default FROM twilio_outbox.accounts a
	WHERE a.name OPERATOR(pg_catalog.=) old_name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'account "%" does not exist', twilio_outbox.clip_input(old_name)
			USING ERRCODE = 'undefined_object';
	END IF;
	IF new_name OPERATOR(pg_catalog.=) old_name THEN
		RETURN;
	END IF;
	UPDATE twilio_outbox.accounts SET is_default = false
	WHERE name OPERATOR(pg_catalog.=) old_name AND is_default;
	INSERT INTO twilio_outbox.accounts
	SELECT (pg_catalog.jsonb_populate_record(NULL::twilio_outbox.accounts,
		pg_catalog.to_jsonb(a) OPERATOR(pg_catalog.||)
		pg_catalog.jsonb_build_object('name', new_name, 'is_default', false))).*
	FROM twilio_outbox.accounts a WHERE a.name OPERATOR(pg_catalog.=) old_name;
	UPDATE twilio_outbox.messages SET account = new_name WHERE account OPERATOR(pg_catalog.=) old_name;
	IF EXISTS (SELECT FROM twilio_outbox.messages m
			   WHERE m.account OPERATOR(pg_catalog.=) new_name AND m.state OPERATOR(pg_catalog.=) 'sending') THEN
		RAISE EXCEPTION 'cannot rename account "%" while some of its messages are being sent',
			twilio_outbox.clip_input(old_name)
			USING ERRCODE = 'object_in_use',
				  HINT = 'Pause the account (pause_account), wait until nothing of it is in flight, then rename it.';
	END IF;
	UPDATE twilio_outbox.senders SET account = new_name WHERE account OPERATOR(pg_catalog.=) old_name;
	UPDATE twilio_outbox.account_credentials SET account = new_name WHERE account OPERATOR(pg_catalog.=) old_name;
	UPDATE twilio_outbox.suppressed_recipients SET account = new_name WHERE account OPERATOR(pg_catalog.=) old_name;
	UPDATE twilio_outbox.account_roles SET account = new_name WHERE account OPERATOR(pg_catalog.=) old_name;
	/* campaigns (41_campaigns.sql) move with their messages */
	UPDATE twilio_outbox.campaigns SET account = new_name WHERE account OPERATOR(pg_catalog.=) old_name;
	DELETE FROM twilio_outbox.accounts WHERE name OPERATOR(pg_catalog.=) old_name;
	UPDATE twilio_outbox.accounts SET is_default = was_default WHERE name OPERATOR(pg_catalog.=) new_name;
END
$$;
COMMENT ON FUNCTION twilio_outbox.rename_account(text, text) IS 'Rename an account: its senders, credentials, suppressions, role grants and messages move with it; refused (55006) while any of its messages is in flight';

/*
 * delete_sender(id): delete a sender no waiting message names (what the
 * 0.1 trigger guarded).  A plain DELETE is allowed too: the messages still
 * waiting on that sender are then dead-lettered as sender_missing.
 */
CREATE FUNCTION twilio_outbox.delete_sender(sender_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF sender_id IS NULL THEN
		RAISE EXCEPTION 'sender_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM FROM twilio_outbox.senders s WHERE s.id OPERATOR(pg_catalog.=) delete_sender.sender_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sender % does not exist', sender_id USING ERRCODE = 'undefined_object';
	END IF;
	IF EXISTS (SELECT FROM twilio_outbox.messages m
			   WHERE m.sender_id OPERATOR(pg_catalog.=) delete_sender.sender_id
				 AND m.state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'sending', 'ambiguous']::twilio_outbox.message_state[])) THEN
		RAISE EXCEPTION 'cannot delete sender % while messages are waiting to be sent from it', sender_id
			USING ERRCODE = 'foreign_key_violation',
				  HINT = 'Cancel or send those messages first.';
	END IF;
	DELETE FROM twilio_outbox.senders s WHERE s.id OPERATOR(pg_catalog.=) delete_sender.sender_id;
END
$$;
COMMENT ON FUNCTION twilio_outbox.delete_sender(bigint) IS 'Delete a sender that no queued, in-flight or ambiguous message names (23503 otherwise)';
