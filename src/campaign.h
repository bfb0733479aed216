/*-------------------------------------------------------------------------
 *
 * campaign.h
 *		Campaigns (issue 12): what twilio_enqueue needs of a campaign's row,
 *		and the dispatcher's pace buckets.  See campaign.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef TWILIO_OUTBOX_CAMPAIGN_H
#define TWILIO_OUTBOX_CAMPAIGN_H

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "utils/date.h"

/* The most characters a campaign name has (campaigns_name_valid). */
#define OUTBOX_MAX_CAMPAIGN_CHARS	64

/* A campaign's row as twilio_enqueue reads it. */
typedef struct OutboxCampaignRow
{
	bool		paused;
	bool		canceled;
	TimestampTz not_before;		/* 0: none */
	TimestampTz not_after;		/* 0: none */
	bool		quiet;			/* its own quiet hours (else the account's) */
	TimeADT		quiet_start;
	TimeADT		quiet_end;
} OutboxCampaignRow;

/* enqueue side: SPI connected, under the pinned search path */
extern void outbox_check_campaign_name(const char *name);
extern void outbox_use_campaign(const char *account, const char *name,
								OutboxCampaignRow *row);

/* dispatcher side: what a claimed row may do under its campaign */
typedef struct OutboxCampaignVerdict
{
	bool		hold;			/* false: it may go */
	bool		cancel;			/* held: its campaign is canceled */
	TimestampTz due_at;			/* else held until then (infinity while paused) */
} OutboxCampaignVerdict;

extern OutboxCampaignVerdict *outbox_campaign_claim(SPITupleTable *rows, uint64 nrows,
													int account_col, int campaign_col,
													int row_col, TimestampTz now);

/* the shared buckets (shmem.c's hooks) */
extern void outbox_campaign_shmem_request(void);
extern void outbox_campaign_shmem_startup(void);

#endif
