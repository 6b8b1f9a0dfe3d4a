// The Responses API through a running gateway, with the official `openai` npm package and the
// Vercel AI SDK's default OpenAI provider (which speaks the Responses API); prints one JSON report.
// Usage: node responses_check.mjs <base_url> <api_key> <model> [basic]
// `basic`: text and streams only (for targets that cannot be scripted to call tools, e.g. the engine).
import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, tool, stepCountIs } from "ai";
import { z } from "zod";

const [baseURL, apiKey, model, mode] = process.argv.slice(2);
const basic = mode === "basic";
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const report = {};

// -- openai npm package -------------------------------------------------------------------------
const created = await client.responses.create({ model, input: "hello from javascript", max_output_tokens: 50 });
report.text = created.output_text;
report.usage = created.usage;

const events = [];
const stream = await client.responses.create({ model, input: "stream from javascript", max_output_tokens: 50, stream: true });
for await (const event of stream) events.push(event);
report.eventTypes = events.map((e) => e.type);
report.sequence = events.map((e) => e.sequence_number);
report.streamed = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
report.streamFinal = events.at(-1).response.output[0].content[0].text;

if (!basic) {
const tools = [{ type: "function", name: "lookup", parameters: { type: "object", properties: { text: { type: "string" } } } }];
const withTool = await client.responses.create({ model, input: "look it up", tools, max_output_tokens: 50 });
const call = withTool.output.find((item) => item.type === "function_call");
report.toolName = call.name;
const followUp = await client.responses.create({
  model, tools, previous_response_id: withTool.id, max_output_tokens: 50,
  input: [{ type: "function_call_output", call_id: call.call_id, output: "42" }],
});
report.afterTool = followUp.output_text;
report.retrieved = (await client.responses.retrieve(followUp.id)).output_text;
report.inputItems = (await client.responses.inputItems.list(followUp.id, { order: "asc" })).data.map((i) => i.type);
await client.responses.delete(followUp.id);
try {
  await client.responses.retrieve(followUp.id);
  report.afterDelete = "still there";
} catch (e) {
  report.afterDelete = e.status;
}
}

// -- Vercel AI SDK, default provider (Responses API) ----------------------------------------------
const provider = createOpenAI({ baseURL, apiKey });
const generated = await generateText({ model: provider(model), prompt: "hello from the ai sdk", maxOutputTokens: 50 });
report.aiText = generated.text;
report.aiUsage = generated.usage;

const streamed = streamText({ model: provider(model), prompt: "streaming from the ai sdk", maxOutputTokens: 50 });
let aiStreamed = "";
for await (const delta of streamed.textStream) aiStreamed += delta;
report.aiStreamed = aiStreamed;
report.aiStreamUsage = await streamed.usage;

if (!basic) {
const looped = await generateText({
  model: provider(model),
  prompt: "use the tool",
  maxOutputTokens: 50,
  stopWhen: stepCountIs(3),
  tools: {
    lookup: tool({
      description: "Look something up",
      inputSchema: z.object({ text: z.string() }),
      execute: async ({ text }) => `found ${text.length}`,
    }),
  },
});
report.aiSteps = looped.steps.length;
report.aiToolCalls = looped.steps.flatMap((s) => s.toolCalls.map((c) => c.toolName));
report.aiAfterTool = looped.text;
}

console.log(JSON.stringify(report));
