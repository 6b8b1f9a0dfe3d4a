// Drives a running gateway with the official `openai` npm package and prints one JSON report.
// Usage: node sdk_check.mjs <base_url> <api_key> <model>
import OpenAI from "openai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const messages = [{ role: "user", content: "hello from javascript" }];
const report = {};

const completion = await client.chat.completions.create({ model, messages });
report.text = completion.choices[0].message.content;
report.usage = completion.usage;

const stream = await client.chat.completions.create({
  model, messages, stream: true, stream_options: { include_usage: true },
});
let streamed = "";
let streamUsage = null;
for await (const chunk of stream) {
  if (chunk.choices.length) streamed += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) streamUsage = chunk.usage;
}
report.streamed = streamed;
report.streamUsage = streamUsage;

const tools = [{ type: "function", function: { name: "lookup", parameters: { type: "object" } } }];
const withTool = await client.chat.completions.create({ model, messages, tools });
const call = withTool.choices[0].message.tool_calls[0];
report.toolName = call.function.name;
const followUp = await client.chat.completions.create({
  model, tools,
  messages: [...messages, withTool.choices[0].message, { role: "tool", tool_call_id: call.id, content: "42" }],
});
report.afterTool = followUp.choices[0].message.content;

const json = await client.chat.completions.create({ model, messages, response_format: { type: "json_object" } });
report.json = JSON.parse(json.choices[0].message.content);

async function errorOf(fn) {
  try { await fn(); return null; } catch (e) { return { cls: e.constructor.name, status: e.status, code: e.code ?? null }; }
}
report.errors = {
  unknownModel: await errorOf(() => client.chat.completions.create({ model: "nope", messages })),
  badKey: await errorOf(() => new OpenAI({ baseURL, apiKey: "sk-wrong", maxRetries: 0 }).chat.completions.create({ model, messages })),
  badRequest: await errorOf(() => client.chat.completions.create({ model, messages, max_tokens: -1 })),
};
console.log(JSON.stringify(report));
