/*-------------------------------------------------------------------------
 *
 * message.c
 *		What a message may look like before it becomes a Twilio request:
 *		address, SID and URL checks, and the GSM-7 / UCS-2 segment count.
 *
 * Pure functions of their arguments: no catalog access, no ereport, and no
 * allocation but outbox_clip's copy.  Callers decide which error to raise.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <string.h>

#include "mb/pg_wchar.h"

/* Channels whose addresses look like "channel:+E164". */
static const char *const channels[] = {"whatsapp", NULL};

/*
 * E.164: a plus sign, then 2 to 15 digits, the first of which is not 0.
 */
bool
outbox_is_e164(const char *s)
{
	int			n = 0;

	if (s[0] != '+' || s[1] < '1' || s[1] > '9')
		return false;
	for (s++; *s; s++, n++)
	{
		if (*s < '0' || *s > '9')
			return false;
	}
	return n >= 2 && n <= 15;
}

/*
 * The channel of an address ("whatsapp" for "whatsapp:+1..."), or NULL for a
 * plain phone number or anything unknown.
 */
const char *
outbox_channel_of(const char *address)
{
	int			i;

	for (i = 0; channels[i] != NULL; i++)
	{
		size_t		len = strlen(channels[i]);

		if (strncmp(address, channels[i], len) == 0 && address[len] == ':')
			return channels[i];
	}
	return NULL;
}

/* An E.164 number, or a known channel's prefix followed by one. */
bool
outbox_is_recipient(const char *s)
{
	const char *channel = outbox_channel_of(s);

	if (channel != NULL)
		s += strlen(channel) + 1;
	return outbox_is_e164(s);
}

/* prefix followed by exactly 32 hexadecimal digits */
bool
outbox_is_sid(const char *s, const char *prefix)
{
	size_t		plen = strlen(prefix);
	int			i;

	if (strncmp(s, prefix, plen) != 0 || strlen(s) != plen + 32)
		return false;
	for (i = 0; i < 32; i++)
	{
		char		c = s[plen + i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
			  (c >= 'A' && c <= 'F')))
			return false;
	}
	return true;
}

/* ASCII control characters (CR, LF, NUL-adjacent, DEL) anywhere in s */
bool
outbox_has_control(const char *s)
{
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c < 0x20 || c == 0x7f)
			return true;
	}
	return false;
}

/*
 * A sender address as Twilio's "phone-number" format allows it for From: an
 * E.164 number, a channel address (whatsapp:+E.164), a short code (3 to 8
 * digits), or an alphanumeric sender ID (1 to 11 letters, digits and
 * spaces, at least one letter).  With sms_only, no channel address (an SMS
 * fallback sender such as FallbackFrom).  The senders table's CHECK is the
 * same but for the letter an alphanumeric ID needs at Twilio.
 */
bool
outbox_is_sender_address(const char *s, bool sms_only)
{
	size_t		len = strlen(s);
	bool		letter = false;
	size_t		i;

	if (outbox_is_e164(s))
		return true;
	if (!sms_only && outbox_channel_of(s) != NULL)
		return outbox_is_recipient(s);
	if (len >= 3 && len <= 8 && strspn(s, "0123456789") == len)
		return true;
	if (len < 1 || len > 11 || s[0] == ' ' || s[len - 1] == ' ')
		return false;
	for (i = 0; i < len; i++)
	{
		char		c = s[i];

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))
			letter = true;
		else if (!((c >= '0' && c <= '9') || c == ' '))
			return false;
	}
	return letter;
}

/*
 * An absolute http or https URL (RFC 3986, so ASCII only) of a length
 * Twilio accepts: a host of letters, digits, dots and hyphens (Twilio
 * refuses underscores in callback hosts) or a bracketed IPv6 literal, an
 * optional user:password@ (Twilio sends it as Basic auth) and :port, and
 * no white space, control, non-ASCII or other character RFC 3986 excludes
 * ("<>\^`{|} and the double quote).
 */
bool
outbox_is_http_url(const char *s)
{
	const char *auth;
	const char *end;
	const char *host;
	const char *p;

	if (strlen(s) > OUTBOX_MAX_URL_LENGTH)
		return false;
	if (pg_strncasecmp(s, "https://", 8) == 0)
		auth = s + 8;
	else if (pg_strncasecmp(s, "http://", 7) == 0)
		auth = s + 7;
	else
		return false;
	for (p = s; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c <= 0x20 || c >= 0x7f || strchr("\"<>\\^`{|}", c) != NULL)
			return false;
	}
	end = auth + strcspn(auth, "/?#");
	host = auth;
	for (p = auth; p < end; p++)
	{
		if (*p == '@')
			host = p + 1;
	}
	if (host == end)
		return false;
	if (*host == '[')
	{
		p = host + 1 + strspn(host + 1, "0123456789abcdefABCDEF:.");
		if (*p != ']' || p == host + 1)
			return false;
		p++;
	}
	else
	{
		p = host + strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-");
		if (p == host || *host == '.' || *host == '-')
			return false;
	}
	if (p < end && *p == ':')
	{
		p++;
		if (p == end || strspn(p, "0123456789") < (size_t) (end - p) ||
			end - p > 5 || atoi(p) > 65535)
			return false;
		p = end;
	}
	return p == end;
}

/*
 * A copy of user input fit to quote in an error message: at most
 * OUTBOX_QUOTE_CHARS characters of the server encoding, cut on a character
 * boundary and marked with "..." when cut, control characters shown as '?'
 * so that no value can break a log line.  Allocates in the current memory
 * context; a NULL gives "(null)".
 */
char *
outbox_clip(const char *s)
{
	int			len;
	int			cut = 0;
	int			chars = 0;
	char	   *out;
	int			i;

	if (s == NULL)
		return pstrdup("(null)");
	len = strlen(s);
	while (cut < len && chars < OUTBOX_QUOTE_CHARS)
	{
		cut += pg_mblen(s + cut);
		chars++;
	}
	if (cut > len)
		cut = len;
	out = palloc(cut + 4);
	memcpy(out, s, cut);
	for (i = 0; i < cut; i++)
	{
		if ((unsigned char) out[i] < 0x20 || out[i] == 0x7f)
			out[i] = '?';
	}
	strcpy(out + cut, cut < len ? "..." : "");
	return out;
}

/*
 * GSM 03.38: septets a code point takes, 1 for the basic table, 2 for the
 * extension table (escape + char), 0 when it is not representable.
 */
static int
gsm7_septets(uint32 cp)
{
	static const uint32 basic_non_ascii[] = {
		0x00A1, 0x00A3, 0x00A4, 0x00A5, 0x00A7, 0x00BF, 0x00C4, 0x00C5,
		0x00C6, 0x00C7, 0x00C9, 0x00D1, 0x00D6, 0x00D8, 0x00DC, 0x00DF,
		0x00E0, 0x00E4, 0x00E5, 0x00E6, 0x00E8, 0x00E9, 0x00EC, 0x00F1,
		0x00F2, 0x00F6, 0x00F8, 0x00F9, 0x00FC, 0x0393, 0x0394, 0x0398,
		0x039B, 0x039E, 0x03A0, 0x03A3, 0x03A6, 0x03A8, 0x03A9
	};
	int			i;

	if (cp == '\n' || cp == '\r')
		return 1;
	if (cp == '\f' || cp == 0x20AC)
		return 2;
	if (cp >= 0x20 && cp <= 0x7e)
	{
		if (cp == '`')
			return 0;
		if (strchr("[\\]^{|}~", (int) cp) != NULL)
			return 2;
		return 1;
	}
	for (i = 0; i < (int) lengthof(basic_non_ascii); i++)
	{
		if (basic_non_ascii[i] == cp)
			return 1;
	}
	return 0;
}

/* Decode one UTF-8 sequence at *p, advancing it; invalid bytes count as U+FFFD. */
static uint32
next_code_point(const unsigned char **p)
{
	const unsigned char *s = *p;
	uint32		cp;
	int			extra;
	int			i;

	if (s[0] < 0x80)
	{
		*p = s + 1;
		return s[0];
	}
	if ((s[0] & 0xE0) == 0xC0)
	{
		cp = s[0] & 0x1F;
		extra = 1;
	}
	else if ((s[0] & 0xF0) == 0xE0)
	{
		cp = s[0] & 0x0F;
		extra = 2;
	}
	else
	{
		cp = s[0] & 0x07;
		extra = 3;
	}
	for (i = 1; i <= extra; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
		{
			*p = s + i;
			return 0xFFFD;
		}
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	*p = s + extra + 1;
	return cp;
}

/*
 * Characters that show nothing: Unicode's White_Space property (tab to CR,
 * space, NEL, no-break spaces, the U+2000 spaces, line and paragraph
 * separators, ideographic space) and the invisible format characters a body
 * is padded with (zero-width space, joiners, word joiner, BOM).
 */
static bool
invisible(uint32 cp)
{
	return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 ||
		cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200D) ||
		cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
		cp == 0x2060 || cp == 0x3000 || cp == 0xFEFF || cp == 0x180E;
}

/* A UTF-8 string with nothing visible in it (Twilio answers 21602 to it). */
bool
outbox_is_blank(const char *utf8)
{
	const unsigned char *s = (const unsigned char *) utf8;

	while (*s)
	{
		if (!invisible(next_code_point(&s)))
			return false;
	}
	return true;
}

/*
 * Control characters no message text carries: C0 but tab, LF, CR and form
 * feed (a GSM-7 character), DEL and the C1 range.
 */
bool
outbox_text_has_control(const char *utf8)
{
	const unsigned char *s = (const unsigned char *) utf8;

	while (*s)
	{
		uint32		cp = next_code_point(&s);

		if ((cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r' && cp != '\f') ||
			(cp >= 0x7F && cp <= 0x9F))
			return true;
	}
	return false;
}

/*
 * Pack units into segments of at most per_part units, never splitting one
 * character (a GSM-7 escape pair, a UTF-16 surrogate pair) across two.
 */
static int
pack_segments(const unsigned char *s, bool gsm, int per_part)
{
	int			parts = 1;
	int			used = 0;

	while (*s)
	{
		uint32		cp = next_code_point(&s);
		int			w = gsm ? gsm7_septets(cp) : (cp > 0xFFFF ? 2 : 1);

		if (used + w > per_part)
		{
			parts++;
			used = 0;
		}
		used += w;
	}
	return parts;
}

/*
 * Encoding and segment count of a UTF-8 body, as a carrier will see it:
 * GSM-7 when every character is in GSM 03.38 (160 septets in one part, 153
 * per part when concatenated), else UCS-2 (70 code units, 67 per part).
 * An empty body counts as one segment (media or template only).
 */
void
outbox_count_segments(const char *utf8, OutboxSegments *out)
{
	const unsigned char *s = (const unsigned char *) utf8;
	int			septets = 0;
	int			units = 0;
	int			chars = 0;
	bool		gsm = true;

	while (*s)
	{
		uint32		cp = next_code_point(&s);
		int			w = gsm7_septets(cp);

		if (w == 0)
			gsm = false;
		septets += w;
		units += cp > 0xFFFF ? 2 : 1;
		chars++;
	}

	out->chars = chars;
	out->encoding = gsm ? OUTBOX_GSM7 : OUTBOX_UCS2;
	out->units = gsm ? septets : units;
	if (out->units <= (gsm ? 160 : 70))
		out->segments = 1;
	else
		out->segments = pack_segments((const unsigned char *) utf8, gsm,
									  gsm ? 153 : 67);
}

const char *
outbox_encoding_name(OutboxEncoding e)
{
	return e == OUTBOX_GSM7 ? "GSM-7" : "UCS-2";
}
