-- Encoding and segment count, as carriers bill them.
-- Its own database and fixtures: this file depends on no other.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS outbox_segments;
CREATE DATABASE outbox_segments;
\c outbox_segments
SET client_min_messages = warning;
CREATE EXTENSION twilio_outbox;
INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC0123456789abcdef0123456789abcdef', true);
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true);
RESET client_min_messages;
TRUNCATE twilio_outbox.messages;

CREATE FUNCTION pg_temp.seg(body text, media text[] DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	msg bigint := twilio_enqueue('+14155552671', body, media_urls => media);
BEGIN
	RETURN (SELECT encoding || ' ' || segments FROM twilio_outbox.messages WHERE id = msg);
END
$$;

SELECT label, pg_temp.seg(body) AS encoding_segments FROM (VALUES
	-- GSM-7: 160 septets in one part, 153 per part beyond
	('gsm 1', 'a'),
	('gsm 160', repeat('a', 160)),
	('gsm 161', repeat('a', 161)),
	('gsm 306', repeat('a', 306)),
	('gsm 307', repeat('a', 307)),
	('gsm 459', repeat('a', 459)),
	('gsm 460', repeat('a', 460)),
	-- the basic table beyond ASCII stays GSM-7, one septet each
	('gsm accents', 'àéèùìòÇØøÅåÆæßÉÄÖÑÜäöñü¿¡£¥§¤ΔΦΓΛΩΠΨΣΘΞ'),
	('gsm newline', E'line one\nline two\r\n'),
	-- the extension table costs two septets: 80 euro signs fill one part
	('gsm ext 80', repeat('€', 80)),
	('gsm ext 81', repeat('€', 81)),
	('gsm ext mix', repeat('a', 158) || '[]'),
	('gsm ext mix+', repeat('a', 159) || '{'),
	-- an escape pair is never split across parts: 152 + 2 + 152 = 306
	-- septets, yet three parts
	('gsm no split', repeat('a', 152) || '^' || repeat('a', 152)),
	-- a backtick is not in GSM 03.38
	('ucs backtick', 'a`b'),
	-- UCS-2: 70 code units in one part, 67 per part beyond
	('ucs 70', repeat('ж', 70)),
	('ucs 71', repeat('ж', 71)),
	('ucs 134', repeat('ж', 134)),
	('ucs 135', repeat('ж', 135)),
	-- an emoji is two UTF-16 code units
	('emoji 35', repeat('😀', 35)),
	('emoji 36', repeat('😀', 36)),
	('emoji 1', 'Your code is 481516 😀'),
	-- a surrogate pair is never split: 66 + 2 = 68 units fit one part, but
	-- 66 + 2 + 66 = 134 units need three parts, not two
	('ucs pair 68', repeat('ж', 66) || '😀'),
	('ucs no split', repeat('ж', 66) || '😀' || repeat('ж', 66)),
	-- 1600 characters is the most Twilio takes
	('gsm 1600', repeat('a', 1600)),
	('ucs 1600', repeat('ж', 1600))
) AS t(label, body);

-- A message without body (media or template only) counts as one segment.
SELECT pg_temp.seg(NULL, ARRAY['https://example.com/a.png']) AS media_only;
