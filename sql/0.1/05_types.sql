CREATE TYPE twilio_outbox.message_state AS ENUM (
	'queued',		/* waiting for its next attempt */
	'sending',		/* claimed by the worker, request in flight */
	'sent',			/* Twilio answered 201 */
	'delivered',	/* status callback: delivered */
	'undelivered',	/* status callback: undelivered */
	'failed',		/* status callback: failed */
	'ambiguous',	/* Twilio may or may not have created it; held for an operator */
	'dead',			/* given up: see twilio_outbox.dead_letters */
	'canceled'		/* canceled by an operator before it was sent */
);

CREATE TYPE twilio_outbox.sender_kind AS ENUM (
	'long_code', 'toll_free', 'short_code', 'messaging_service',
	'whatsapp', 'alphanumeric'
);

CREATE TYPE twilio_outbox.error_action AS ENUM (
	'retry',			/* back off and try again */
	'dead',				/* dead-letter the message */
	'pause_account',	/* stop the whole account until an operator resumes it */
	'suppress'			/* dead-letter and never send to this recipient again */
);

CREATE TYPE twilio_outbox.attempt_outcome AS ENUM (
	'sent',			/* 201 */
	'retry',		/* failed, will be retried */
	'dead',			/* failed, dead-lettered */
	'suppressed',	/* failed, dead-lettered, recipient suppressed */
	'paused',		/* account paused; the attempt is not charged to the message */
	'rate_limited',	/* 429; not charged to the message */
	'held',			/* outcome unknown, message held as ambiguous */
	'lost'			/* the worker died with the request in flight */
);

