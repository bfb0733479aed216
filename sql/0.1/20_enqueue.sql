/* The entry point for applications. */
CREATE FUNCTION @extschema@.twilio_enqueue(
	to_number			text,
	body				text DEFAULT NULL,
	from_number			text DEFAULT NULL,
	messaging_service_sid text DEFAULT NULL,
	media_urls			text[] DEFAULT NULL,
	status_callback		text DEFAULT NULL,
	send_after			timestamptz DEFAULT NULL,
	expires_at			timestamptz DEFAULT NULL,
	dedupe_key			text DEFAULT NULL,
	account				text DEFAULT NULL,
	content_sid			text DEFAULT NULL,
	content_variables	jsonb DEFAULT NULL,
	params				jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'twilio_enqueue';
/* No SET search_path clause: the C function pins its own (pg_catalog only) for its queries. */
COMMENT ON FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb)
	IS 'Queue a Twilio message in the caller''s transaction; returns the message id';

