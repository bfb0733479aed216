/* quiet hours, recipient time zones and abuse guards (issue 12, enqueue side) */

/*
 * A time zone name PostgreSQL's time zone database knows (America/New_York,
 * Europe/London, UTC; any case, as SET TIME ZONE takes it), but not a POSIX
 * rule such as 'ABC-3', which PostgreSQL would also accept: a recipient's
 * zone must follow its country's daylight saving rules.  Its canonical
 * spelling: twilio_outbox.time_zone_name().  STABLE, not IMMUTABLE: a new
 * time zone database may add or drop names.
 */
CREATE FUNCTION twilio_outbox.time_zone_known(name text) RETURNS boolean
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'twilio_outbox_time_zone_known';
COMMENT ON FUNCTION twilio_outbox.time_zone_known(text) IS 'Whether name is a time zone of PostgreSQL''s time zone database (not a POSIX rule)';

CREATE FUNCTION twilio_outbox.time_zone_name(name text) RETURNS text
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'twilio_outbox_time_zone_name';
COMMENT ON FUNCTION twilio_outbox.time_zone_name(text) IS 'The canonical spelling of a known time zone (america/new_york: America/New_York); 22023 for an unknown one';

/*
 * When a quiet window [quiet_start, quiet_end) of local time in zone holds
 * at time at, the moment (as a timestamptz) it ends; NULL when at is outside
 * it.  A window may wrap past midnight (21:00-08:00).  Computed in the zone
 * with PostgreSQL's time zone code, so it is correct across daylight saving
 * changes: the end is quiet_end local time on the day it comes.
 */
CREATE FUNCTION twilio_outbox.quiet_until(zone text, quiet_start time, quiet_end time,
	at timestamptz DEFAULT pg_catalog.now()) RETURNS timestamptz
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'twilio_outbox_quiet_until';
COMMENT ON FUNCTION twilio_outbox.quiet_until(text, time, time, timestamptz) IS 'The end of the quiet window [quiet_start, quiet_end) of local time in zone that holds at time at, or NULL when none holds';

/*
 * Quiet hours, per account: marketing traffic (messages.traffic_class, in
 * 41_campaigns.sql) is not sent between quiet_start and quiet_end of the
 * recipient's local time (default 21:00 to 08:00; both NULL: no quiet
 * hours).  quiet_transactional: transactional traffic waits too.
 * default_time_zone: the recipient's zone when neither the enqueue call nor
 * number_time_zones gives one.
 *
 * Abuse guards, per account, NULL = no limit:
 *   max_per_recipient_hour, max_per_recipient_day: the most messages
 *     enqueued to one recipient in the current clock hour (UTC) and in the
 *     last 24 clock hours, this one included (recipient_counts);
 *   allowed_country_codes: the calling codes (1, 44, 353, ...) a recipient's
 *     number may start with, as Twilio's geo permissions would allow.
 */
CREATE FUNCTION twilio_outbox.calling_codes_valid(codes text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(pg_catalog.array_ndims(codes), 1) OPERATOR(pg_catalog.=) 1
		AND NOT EXISTS (SELECT FROM pg_catalog.unnest(codes) c
						WHERE c IS NULL OR c OPERATOR(pg_catalog.!~) '^[1-9][0-9]{0,2}$')
$$;
COMMENT ON FUNCTION twilio_outbox.calling_codes_valid(text[]) IS 'A one-dimensional (or empty) array of calling codes: 1 to 3 digits, not starting with 0, no NULL';

ALTER TABLE twilio_outbox.accounts
	ADD COLUMN quiet_start time DEFAULT '21:00',
	ADD COLUMN quiet_end time DEFAULT '08:00',
	ADD COLUMN quiet_transactional boolean NOT NULL DEFAULT false,
	ADD COLUMN default_time_zone text NOT NULL DEFAULT 'UTC'
		CONSTRAINT accounts_default_time_zone_known
		CHECK (twilio_outbox.time_zone_known(default_time_zone)),
	ADD COLUMN max_per_recipient_hour integer
		CONSTRAINT accounts_max_per_recipient_hour_positive
		CHECK (max_per_recipient_hour OPERATOR(pg_catalog.>=) 1),
	ADD COLUMN max_per_recipient_day integer
		CONSTRAINT accounts_max_per_recipient_day_positive
		CHECK (max_per_recipient_day OPERATOR(pg_catalog.>=) 1),
	ADD COLUMN allowed_country_codes text[]
		CONSTRAINT accounts_allowed_country_codes_form
		CHECK (twilio_outbox.calling_codes_valid(allowed_country_codes)),
	ADD CONSTRAINT accounts_quiet_hours_both_or_neither
		CHECK ((quiet_start IS NULL) OPERATOR(pg_catalog.=) (quiet_end IS NULL)
			   AND (quiet_start IS NULL
					OR (quiet_start OPERATOR(pg_catalog.<>) quiet_end
						AND quiet_start OPERATOR(pg_catalog.<) '24:00'
						AND quiet_end OPERATOR(pg_catalog.<) '24:00')));
COMMENT ON COLUMN twilio_outbox.accounts.quiet_start IS 'start of the recipients'' quiet hours, local time (NULL with quiet_end: none); marketing traffic waits them out';
COMMENT ON COLUMN twilio_outbox.accounts.quiet_end IS 'end of the recipients'' quiet hours, local time; may be earlier than quiet_start (the window wraps past midnight)';
COMMENT ON COLUMN twilio_outbox.accounts.quiet_transactional IS 'transactional traffic waits out quiet hours too';
COMMENT ON COLUMN twilio_outbox.accounts.default_time_zone IS 'a recipient''s time zone when the enqueue call and number_time_zones give none';
COMMENT ON COLUMN twilio_outbox.accounts.max_per_recipient_hour IS 'the most messages enqueued to one recipient in one clock hour (UTC); NULL: no limit';
COMMENT ON COLUMN twilio_outbox.accounts.max_per_recipient_day IS 'the most messages enqueued to one recipient in the last 24 clock hours; NULL: no limit';
COMMENT ON COLUMN twilio_outbox.accounts.allowed_country_codes IS 'calling codes a recipient may have (geo permissions); NULL: every country';

/*
 * The recipient's zone, resolved at enqueue for a message quiet hours apply
 * to (NULL for the others: they never wait, and cost no lookup).  The
 * dispatcher checks it again at claim time, for retries and for messages
 * that became due while the window changed.
 */
ALTER TABLE twilio_outbox.messages ADD COLUMN quiet_zone text;
COMMENT ON COLUMN twilio_outbox.messages.quiet_zone IS 'the recipient''s time zone when quiet hours apply to the message (marketing, or the account''s quiet_transactional); NULL: they do not';

/*
 * Number prefixes (digits after the +, the calling code first) and the time
 * zone of the numbers they start; the longest prefix that matches wins.
 * Seeded below for countries with a single time zone and for North American
 * area codes; editable by the admin role (README "Time zones").
 */
CREATE TABLE twilio_outbox.number_time_zones (
	prefix		text PRIMARY KEY
		CONSTRAINT number_time_zones_prefix_digits
		CHECK (prefix OPERATOR(pg_catalog.~) '^[1-9][0-9]{0,14}$'),
	time_zone	text NOT NULL
		CONSTRAINT number_time_zones_time_zone_known
		CHECK (twilio_outbox.time_zone_known(time_zone)),
	note		text
);
COMMENT ON TABLE twilio_outbox.number_time_zones IS 'Time zone of the numbers starting with prefix (digits after +); the longest matching prefix wins';

/*
 * Countries (calling codes) with a single time zone, from the ITU calling
 * code assignments and the IANA time zone database (zone1970.tab lists the
 * zones of each country).  Countries with several zones (the United States
 * and Canada under +1, Russia, Mexico, Brazil, Australia, Indonesia, Spain,
 * Portugal, Chile, Ecuador, New Zealand, ...) are left to area codes or to
 * the account's default.
 */
INSERT INTO twilio_outbox.number_time_zones (prefix, time_zone, note)
SELECT c.prefix, c.zone, 'country' FROM (VALUES
	('20', 'Africa/Cairo'), ('212', 'Africa/Casablanca'), ('213', 'Africa/Algiers'),
	('216', 'Africa/Tunis'), ('233', 'Africa/Accra'), ('234', 'Africa/Lagos'),
	('251', 'Africa/Addis_Ababa'), ('254', 'Africa/Nairobi'), ('255', 'Africa/Dar_es_Salaam'),
	('256', 'Africa/Kampala'), ('27', 'Africa/Johannesburg'),
	('30', 'Europe/Athens'), ('31', 'Europe/Amsterdam'), ('32', 'Europe/Brussels'),
	('33', 'Europe/Paris'), ('36', 'Europe/Budapest'), ('39', 'Europe/Rome'),
	('40', 'Europe/Bucharest'), ('41', 'Europe/Zurich'), ('420', 'Europe/Prague'),
	('421', 'Europe/Bratislava'), ('43', 'Europe/Vienna'), ('44', 'Europe/London'),
	('45', 'Europe/Copenhagen'), ('46', 'Europe/Stockholm'), ('47', 'Europe/Oslo'),
	('48', 'Europe/Warsaw'), ('49', 'Europe/Berlin'),
	('352', 'Europe/Luxembourg'), ('353', 'Europe/Dublin'), ('354', 'Atlantic/Reykjavik'),
	('356', 'Europe/Malta'), ('357', 'Asia/Nicosia'), ('358', 'Europe/Helsinki'),
	('359', 'Europe/Sofia'), ('370', 'Europe/Vilnius'), ('371', 'Europe/Riga'),
	('372', 'Europe/Tallinn'), ('373', 'Europe/Chisinau'), ('374', 'Asia/Yerevan'),
	('375', 'Europe/Minsk'), ('380', 'Europe/Kyiv'), ('381', 'Europe/Belgrade'),
	('385', 'Europe/Zagreb'), ('386', 'Europe/Ljubljana'),
	('51', 'America/Lima'), ('53', 'America/Havana'),
	('54', 'America/Argentina/Buenos_Aires'), ('57', 'America/Bogota'),
	('58', 'America/Caracas'), ('502', 'America/Guatemala'), ('503', 'America/El_Salvador'),
	('504', 'America/Tegucigalpa'), ('505', 'America/Managua'), ('506', 'America/Costa_Rica'),
	('507', 'America/Panama'), ('591', 'America/La_Paz'), ('595', 'America/Asuncion'),
	('598', 'America/Montevideo'),
	('60', 'Asia/Kuala_Lumpur'), ('63', 'Asia/Manila'), ('65', 'Asia/Singapore'),
	('66', 'Asia/Bangkok'), ('81', 'Asia/Tokyo'), ('82', 'Asia/Seoul'),
	('84', 'Asia/Ho_Chi_Minh'), ('852', 'Asia/Hong_Kong'), ('853', 'Asia/Macau'),
	('86', 'Asia/Shanghai'), ('880', 'Asia/Dhaka'), ('886', 'Asia/Taipei'),
	('90', 'Europe/Istanbul'), ('91', 'Asia/Kolkata'), ('92', 'Asia/Karachi'),
	('94', 'Asia/Colombo'), ('961', 'Asia/Beirut'), ('962', 'Asia/Amman'),
	('964', 'Asia/Baghdad'), ('965', 'Asia/Kuwait'), ('966', 'Asia/Riyadh'),
	('968', 'Asia/Muscat'), ('971', 'Asia/Dubai'), ('972', 'Asia/Jerusalem'),
	('973', 'Asia/Bahrain'), ('974', 'Asia/Qatar'), ('977', 'Asia/Kathmandu'),
	('98', 'Asia/Tehran'), ('994', 'Asia/Baku'), ('995', 'Asia/Tbilisi')
) AS c(prefix, zone)
/* a zone this server's time zone database lacks is left out, never a failed install */
WHERE twilio_outbox.time_zone_known(c.zone);

/*
 * North American Numbering Plan (+1): the area code's predominant zone,
 * from the NANPA area code assignments (area code -> state, province or
 * country) and, for a state or province split between zones, the zone of
 * most of the area code's population.  Known limits: numbers keep their
 * area code when people move, and mobile numbers more so; a split area
 * code (850 in Florida's panhandle, 208 in Idaho, 541 in Oregon, 606 and
 * 270 in Kentucky, 423 and 931 in Tennessee, 308 in Nebraska, 620 and 785
 * in Kansas, 701 and 605 in the Dakotas, 906 in Michigan, 807 in Ontario,
 * 915 in Texas) gives the zone of most of its people.  Canada's 867
 * (three territories, three zones) and non-geographic codes (800, 888, 500,
 * ...) are left out.
 */
INSERT INTO twilio_outbox.number_time_zones (prefix, time_zone, note)
SELECT '1' OPERATOR(pg_catalog.||) a, z.zone, 'NANP area code'
FROM (VALUES
	('America/New_York',
	 '201 202 203 207 212 215 216 220 223 229 231 234 239 240 248 252 260 267 269 272 276 278 301 302 304 305 313 315 317 321 326 330 332 336 339 347 351 352 380 386 404 407 410 412 413 419 423 434 440 443 445 463 470 475 478 484 502 508 513 516 517 518 540 551 561 567 570 571 574 585 586 606 607 609 610 614 616 617 631 646 656 667 678 680 681 689 703 704 706 716 717 718 724 727 732 734 740 743 754 757 762 765 770 772 774 781 786 802 803 804 810 812 813 814 835 838 839 843 845 848 854 856 857 859 860 862 863 864 865 878 904 908 910 912 914 917 919 929 930 934 937 941 947 948 954 959 973 978 980 984 989'),
	('America/Chicago',
	 '205 210 214 217 218 219 224 225 228 251 254 256 262 270 274 281 308 309 312 314 316 318 319 320 325 331 334 337 346 361 364 402 405 409 417 430 432 447 448 464 469 479 501 504 507 512 531 534 539 563 572 573 580 601 605 608 612 615 618 620 629 630 636 641 651 659 662 682 701 708 712 713 715 726 731 737 763 769 773 779 785 806 815 816 817 830 832 847 850 870 872 901 903 913 918 920 931 936 938 940 945 952 956 972 979 985'),
	('America/Denver', '208 303 307 385 406 435 505 575 719 720 801 915 970 983 986'),
	('America/Phoenix', '480 520 602 623 928'),
	('America/Los_Angeles',
	 '206 209 213 253 279 310 323 341 350 360 369 408 415 424 425 442 458 503 509 510 530 541 559 562 564 619 626 628 650 657 661 669 702 707 714 725 747 760 775 805 818 820 831 840 858 909 916 925 949 951 971'),
	('America/Anchorage', '907'),
	('Pacific/Honolulu', '808'),
	('America/Toronto',
	 '226 249 263 289 343 354 365 367 382 387 416 418 437 438 450 468 514 519 548 579 581 613 647 683 705 742 753 807 819 873 905 942'),
	('America/Winnipeg', '204 431 584'),
	('America/Regina', '306 474 639'),
	('America/Edmonton', '368 403 587 780 825'),
	('America/Vancouver', '236 250 257 604 672 778'),
	('America/Halifax', '782 902'),
	('America/Moncton', '428 506'),
	('America/St_Johns', '709 879'),
	('America/Puerto_Rico', '787 939'),
	('America/Santo_Domingo', '809 829 849'),
	('America/Jamaica', '658 876'),
	('America/Nassau', '242'), ('America/Barbados', '246'), ('America/Anguilla', '264'),
	('America/Antigua', '268'), ('America/Tortola', '284'), ('America/St_Thomas', '340'),
	('America/Cayman', '345'), ('Atlantic/Bermuda', '441'), ('America/Grenada', '473'),
	('America/Grand_Turk', '649'), ('America/Montserrat', '664'), ('Pacific/Saipan', '670'),
	('Pacific/Guam', '671'), ('Pacific/Pago_Pago', '684'), ('America/Lower_Princes', '721'),
	('America/St_Lucia', '758'), ('America/Dominica', '767'), ('America/St_Vincent', '784'),
	('America/Port_of_Spain', '868'), ('America/St_Kitts', '869')
) AS z(zone, codes)
CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.string_to_array(z.codes, ' ')) AS a
WHERE twilio_outbox.time_zone_known(z.zone);

/*
 * Messages enqueued per recipient per clock hour (UTC), kept only for
 * accounts with a per-recipient limit: twilio_enqueue adds one for each
 * message it inserts (an upsert: concurrent enqueues to one recipient take
 * turns on the hour's row, so the limit holds exactly), and drops the
 * recipient's rows older than a day as it goes.  A rolled-back enqueue
 * leaves no count.  purge_recipient_counts() drops the rest.
 */
CREATE TABLE twilio_outbox.recipient_counts (
	account		text NOT NULL
		REFERENCES twilio_outbox.accounts (name) ON UPDATE CASCADE ON DELETE CASCADE,
	to_number	text NOT NULL,
	hour		timestamptz NOT NULL,
	n			integer NOT NULL,
	PRIMARY KEY (account, to_number, hour)
);
COMMENT ON TABLE twilio_outbox.recipient_counts IS 'Messages enqueued per account, recipient and clock hour (UTC), for max_per_recipient_hour and max_per_recipient_day';

CREATE FUNCTION twilio_outbox.purge_recipient_counts() RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
	WITH gone AS (
		DELETE FROM twilio_outbox.recipient_counts
		WHERE hour OPERATOR(pg_catalog.<) (pg_catalog.date_trunc('hour', pg_catalog.now(), 'UTC')
			OPERATOR(pg_catalog.-) interval '23 hours')
		RETURNING 1)
	SELECT pg_catalog.count(*) FROM gone
$$;
COMMENT ON FUNCTION twilio_outbox.purge_recipient_counts() IS 'Drop per-recipient counts no limit looks at any more (older than 24 clock hours); returns how many';

/*
 * The calling code of an E.164 number (or channel address): ITU's codes
 * are prefix-free, 1 digit for 1 and 7, 2 digits for the list below, 3
 * digits for the rest.
 */
CREATE FUNCTION twilio_outbox.calling_code(number text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN d IS NULL OR d OPERATOR(pg_catalog.=) '' THEN NULL
		WHEN pg_catalog.left(d, 1) OPERATOR(pg_catalog.=) ANY (ARRAY['1', '7']) THEN pg_catalog.left(d, 1)
		WHEN pg_catalog.left(d, 2) OPERATOR(pg_catalog.=) ANY (ARRAY['20', '27', '30', '31', '32',
			'33', '34', '36', '39', '40', '41', '43', '44', '45', '46', '47', '48', '49', '51',
			'52', '53', '54', '55', '56', '57', '58', '60', '61', '62', '63', '64', '65', '66',
			'81', '82', '84', '86', '90', '91', '92', '93', '94', '95', '98'])
			THEN pg_catalog.left(d, 2)
		ELSE pg_catalog.left(d, 3) END
	FROM (SELECT pg_catalog.substring(number, '\+([0-9]+)$') AS d) x
$$;
COMMENT ON FUNCTION twilio_outbox.calling_code(text) IS 'The ITU calling code a number (+E.164, or a channel address ending in one) starts with';

/*
 * Enqueue history for the anomaly check: a BRIN index on created_at lets
 * it count the messages of a 5-minute or 1-hour window by reading only
 * the block ranges of that window (rows are appended in created_at order),
 * for a few kilobytes of index and next to nothing per insert.
 */
CREATE INDEX messages_created_brin ON twilio_outbox.messages USING brin (created_at);

/*
 * The anomaly check (the health view's row 'anomaly'), per account, over
 * the messages enqueued in the last 5 minutes (those still in the table):
 *   rate: more than health_anomaly_factor (default 10) times the account's
 *     norm, the average 5 minutes of the same hour of day (now +- 30
 *     minutes) over the 7 days before, and at least health_anomaly_min_count
 *     (default 100) messages;
 *   country: to one calling code, at least health_anomaly_min_count messages
 *     and more than health_anomaly_factor times that country's norm;
 *   range: to at least health_anomaly_range_count (default 20) different
 *     numbers of one block of 1,000 (all digits but the last three), the
 *     pattern of SMS pumping.
 * One row per finding, with its figures.  Runs as the owner: the health
 * view calls it for roles that may not read the messages it counts (the
 * metrics exporter's).
 */
CREATE FUNCTION twilio_outbox.anomalies(
	OUT account text, OUT kind text, OUT subject text, OUT last_5min bigint,
	OUT norm_5min numeric, OUT threshold numeric)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	WITH s AS (
		SELECT coalesce(pg_catalog.current_setting('twilio_outbox.health_anomaly_factor', true), '10')::numeric AS factor,
			   coalesce(pg_catalog.current_setting('twilio_outbox.health_anomaly_min_count', true), '100')::bigint AS min_count,
			   coalesce(pg_catalog.current_setting('twilio_outbox.health_anomaly_range_count', true), '20')::bigint AS range_count
	), recent AS (
		SELECT m.account, m.to_number, twilio_outbox.calling_code(m.to_number) AS cc
		FROM twilio_outbox.messages m
		WHERE m.created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '5 minutes')
	), history AS (
		/* the same hour of day (now +- 30 minutes) on each of the 7 days before */
		SELECT m.account, twilio_outbox.calling_code(m.to_number) AS cc
		FROM pg_catalog.generate_series(1, 7) AS d(k)
		JOIN twilio_outbox.messages m
		  ON m.created_at OPERATOR(pg_catalog.>=) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => d.k, mins => 30))
		 AND m.created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => d.k, mins => -30))
		WHERE EXISTS (SELECT FROM recent r WHERE r.account OPERATOR(pg_catalog.=) m.account)
	), norm AS (
		/* 7 days x 12 five-minute slots per hour */
		SELECT h.account, pg_catalog.count(*)::numeric OPERATOR(pg_catalog./) 84 AS per5
		FROM history h GROUP BY h.account
	), norm_cc AS (
		SELECT h.account, h.cc, pg_catalog.count(*)::numeric OPERATOR(pg_catalog./) 84 AS per5
		FROM history h GROUP BY h.account, h.cc
	), by_account AS (
		SELECT r.account, pg_catalog.count(*) AS n FROM recent r GROUP BY r.account
	), by_cc AS (
		SELECT r.account, r.cc, pg_catalog.count(*) AS n FROM recent r GROUP BY r.account, r.cc
	), by_range AS (
		SELECT r.account, pg_catalog.left(r.to_number, pg_catalog.length(r.to_number) OPERATOR(pg_catalog.-) 3) AS block,
			   pg_catalog.count(DISTINCT r.to_number) AS n
		FROM recent r
		WHERE r.to_number OPERATOR(pg_catalog.~) '\+[0-9]{7,}$'
		GROUP BY 1, 2
	)
	SELECT b.account, 'rate', 'all recipients', b.n, pg_catalog.round(coalesce(n.per5, 0), 1),
		   pg_catalog.round(GREATEST(s.factor OPERATOR(pg_catalog.*) coalesce(n.per5, 0), s.min_count), 1)
	FROM by_account b CROSS JOIN s LEFT JOIN norm n ON n.account OPERATOR(pg_catalog.=) b.account
	WHERE b.n OPERATOR(pg_catalog.>=) s.min_count
	  AND b.n OPERATOR(pg_catalog.>) (s.factor OPERATOR(pg_catalog.*) coalesce(n.per5, 0))
	UNION ALL
	SELECT c.account, 'country', '+' OPERATOR(pg_catalog.||) c.cc, c.n, pg_catalog.round(coalesce(n.per5, 0), 1),
		   pg_catalog.round(GREATEST(s.factor OPERATOR(pg_catalog.*) coalesce(n.per5, 0), s.min_count), 1)
	FROM by_cc c CROSS JOIN s
	LEFT JOIN norm_cc n ON n.account OPERATOR(pg_catalog.=) c.account AND n.cc OPERATOR(pg_catalog.=) c.cc
	WHERE c.cc IS NOT NULL AND c.n OPERATOR(pg_catalog.>=) s.min_count
	  AND c.n OPERATOR(pg_catalog.>) (s.factor OPERATOR(pg_catalog.*) coalesce(n.per5, 0))
	UNION ALL
	SELECT g.account, 'range', g.block OPERATOR(pg_catalog.||) 'xxx', g.n, NULL, s.range_count
	FROM by_range g CROSS JOIN s
	WHERE g.n OPERATOR(pg_catalog.>=) s.range_count
	ORDER BY 1, 2, 3
$$;
COMMENT ON FUNCTION twilio_outbox.anomalies() IS 'Enqueue patterns of the last 5 minutes far above an account''s norm (rate, one country) or many numbers of one 1,000-number block; settings twilio_outbox.health_anomaly_*';
