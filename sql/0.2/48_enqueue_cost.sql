/* what an enqueue costs (issue 14) */

/*
 * No foreign key from messages to accounts.  Its check was a statement per
 * enqueue (about 40,000 instructions of the ~540,000 an enqueue costs) and
 * a KEY SHARE lock on the account's row: every enqueue wrote that row's
 * xmax (a WAL record, a dirtied page, and a MultiXact as soon as two
 * enqueues of one account overlapped), so one hot row for all of them.
 * What it protected stays protected otherwise:
 *  - twilio_enqueue() refuses an unknown account (42704) by probing it
 *    under the snapshot its insert then uses, as before;
 *  - a message whose account was deleted since (concurrently, or later
 *    while it waited) is never sent: the dispatcher dead-letters it as
 *    account_missing (the claim checks the account; the orphan sweep finds
 *    those no claim names), visible in dead_letters;
 *  - rows written around the API with any account name meet the same end.
 * What changes: an account whose messages remain (finished ones, or live
 * ones, which are then dead-lettered) can be deleted once its senders are
 * (senders keep their key to accounts), and a plain rename of such an
 * account is no longer refused for its messages' sake (rename_account()
 * moves them; a plain UPDATE leaves them naming the old name).
 * 10_tables.sql no longer adds the key; a database upgraded by a
 * development build that did loses it here.
 */
ALTER TABLE twilio_outbox.messages DROP CONSTRAINT IF EXISTS messages_account_fkey;
