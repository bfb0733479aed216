/*
 * twilio_outbox 0.1: schema, roles, the enqueue entry point and the
 * dispatcher's control functions.
 *
 * Everything lives in the schema twilio_outbox, owned by the extension, except
 * twilio_enqueue(), which is created in the extension's schema (the first
 * schema of the search_path at CREATE EXTENSION time, normally public) so that
 * applications can call it unqualified.  Every name below is qualified.
 */

\echo Use "CREATE EXTENSION twilio_outbox" to load this file. \quit

