// The pitr-execute Edge Function: the shared app, served by Supabase's edge runtime (which routes
// /functions/v1/pitr-execute here). It must never hold logic of its own: that lives in shared/;
// appFromEnv hands the background restore of a 202 answer to EdgeRuntime.waitUntil. Supabase
// routes /functions/v1/pitr-execute/cancel here too (POST cancel; DELETE ?rollback_id= likewise).
import { appFromEnv } from "../../../shared/http/app.ts";

Deno.serve(appFromEnv().fetch);
