/*-------------------------------------------------------------------------
 *
 * twilio_outbox.c
 *		Module entry point: each module registers what it owns.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "fmgr.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	outbox_guc_init();
	outbox_shmem_init();
	outbox_control_init();
	outbox_callback_init();
}
