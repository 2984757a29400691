-- wrk script for the pipelined HTTP row: each connection sends DEPTH requests back to back and
-- then waits for their DEPTH responses (wrk counts the requests in the batch).
local depth = 16

init = function(args)
   local batch = {}
   for i = 1, depth do
      batch[i] = wrk.format()
   end
   req = table.concat(batch)
end

request = function()
   return req
end
